"""Small Transformers with pluggable attention: `DecoderLM` (causal LM) and `EncoderClassifier`."""
from .transformer import Block, DecoderLM, EncoderClassifier, TransformerConfig, build_model

__all__ = ["TransformerConfig", "Block", "DecoderLM", "EncoderClassifier", "build_model"]
