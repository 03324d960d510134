"""Lip-syncing a video: decode, faces, crops, sampler, blend, encode (one core for every caller)."""
