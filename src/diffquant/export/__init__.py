"""Quantized exports people can share: each component in a safe, library-loadable layout
(:mod:`.formats`), a scan that finds pickles (:mod:`.safety`), the lines that load an export with
plain diffusers/transformers (:mod:`.usage`), and a Hugging Face model card with the measured
facts (:mod:`.card`, :mod:`.measured`). ``diffquant.serialize`` writes and reads whole exports."""
