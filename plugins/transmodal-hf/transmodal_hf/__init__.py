"""transmodal-hf: Hugging Face text models (``hf-text``) with their own tokenizers (``hf-tokenizer``)."""
