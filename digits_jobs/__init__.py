"""NVIDIA DIGITS jobs for Thermalnet: job definitions, the REST client and the validator of DIGITS'
network rules (the stand-in server the client is tested against is tests/digits_standin.py).
"""
