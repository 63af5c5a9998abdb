"""Decoder service: reconstructs a missing prediction from the parity and the other k-1 results."""
