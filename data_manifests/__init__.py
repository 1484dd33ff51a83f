"""Manifest builders for real corpora (MIMIC-IV-ECG, PTB-XL) and the manifest schema (see README.md)."""
