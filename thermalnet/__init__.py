"""The kit's core and library, imported by dataset_builder/, tools/ and digits_jobs/.

Core (one home for each fact): spec (numbers: Q, sizes, windows, splits), layout (a
dataset folder's file names and readers), decoders (probabilities -> brightness),
metrics (RMS of eq. 2, SSIM, PSNR), solver (DIGITS' solver arithmetic), caffe_env
(where Caffe is), atomic (write-then-rename outputs), cli (the shared command-line
conventions). Library: nets, inference, baselines, postprocess, gatys, caffe_log, plots.
The launchers are in tools/ (installed as thermalnet.tools).
"""
