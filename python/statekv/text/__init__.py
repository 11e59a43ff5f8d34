"""Text: the tokenizer rebuilt from a GGUF vocabulary (:mod:`.tokenizer`) and chat templates
rendered as transformers renders them (:mod:`.chat_template`). Nothing here imports the compiled
extension."""
from .chat_template import ChatTemplate
from .tokenizer import tokenizer_from_gguf

__all__ = ["ChatTemplate", "tokenizer_from_gguf"]
