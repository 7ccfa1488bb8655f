"""The kit's commands (`python -m tools.X`; installed as thermalnet.tools with thermalnet-* entry points).

Each module is one job with build_parser() and main(argv) over a tested function; the library
they use is in thermalnet/, dataset building in dataset_builder/.
"""
