"""Corpus sources, caption engines, CLAP scoring and the distributed captioning job."""
