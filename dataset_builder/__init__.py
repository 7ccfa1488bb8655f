"""Building datasets: FLIR radiometric JPEGs, folders of aligned pairs or SYNTHETIC scenes -> DIGITS
"prebuilt" LMDBs, manifest, class prior and v(Y) weights (`python -m dataset_builder --help`).
"""
