"""Encoder service: runs the parity encoder F_k over coding groups."""
