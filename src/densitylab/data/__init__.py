"""Data: sources (synthetic familiarity corpus, local text, HF hub), tokenizer, packing, DataModule."""

from densitylab.data.corpus import Corpus
from densitylab.data.datamodule import DataModule, WindowDataset
from densitylab.data.packing import IGNORE_INDEX, PackedSplit, pack_documents, tokenize_and_pack
from densitylab.data.sources import HubSource, SyntheticSource, TextSource
from densitylab.data.uniform import UniformSequenceDataModule, make_uniform_sequences

__all__ = [
    "Corpus",
    "DataModule",
    "WindowDataset",
    "IGNORE_INDEX",
    "PackedSplit",
    "pack_documents",
    "tokenize_and_pack",
    "UniformSequenceDataModule",
    "make_uniform_sequences",
    "HubSource",
    "SyntheticSource",
    "TextSource",
]
