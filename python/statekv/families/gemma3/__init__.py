"""Gemma 3. Today its text decoder only: :mod:`.convert` maps transformers' ``Gemma3ForCausalLM``
to llama.cpp's ``gemma3`` GGUF (the decoder itself is ``cpp/src/models/gemma3.cpp``). The vision
half (SigLIP mmproj, frame layout) and with it the registry line in :mod:`statekv.families` come
with Gemma 3 vision.
"""
