"""Triton kernels and their launchers, one op family per file. No autograd here."""
