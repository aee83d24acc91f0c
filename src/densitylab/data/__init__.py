"""Data: sources (synthetic familiarity corpus, local text, HF hub), tokenizer, entities, packing, DataModule.

Importing this package (or a pure submodule such as :mod:`densitylab.data.packing`) never imports
Lightning or Hydra: the Lightning data modules (:class:`DataModule`, :class:`UniformSequenceDataModule`)
are imported on first use of their names (PEP 562).

Modules: :mod:`~densitylab.data.corpus` (the corpus; documents in lists or memory-mapped Arrow),
:mod:`~densitylab.data.sources`,
:mod:`~densitylab.data.synthetic` (the generator), :mod:`~densitylab.data.tokenizer` (tokenizer specs),
:mod:`~densitylab.data.entities` (entity extractors), :mod:`~densitylab.data.packing` (token windows),
:mod:`~densitylab.data.canaries`, :mod:`~densitylab.data.prepare` (the cached preparation),
:mod:`~densitylab.data.loaders` (datasets, samplers, DataLoaders), :mod:`~densitylab.data.datamodule`
and :mod:`~densitylab.data.uniform` (the LightningDataModules).
"""

from __future__ import annotations

import importlib
from typing import Any

from densitylab.data.corpus import ArrowTexts, Corpus
from densitylab.data.entities import (
    CapitalizedEntities,
    EntityExtractor,
    GazetteerEntities,
    NoEntities,
    SpacyEntities,
    SyntheticEntities,
)
from densitylab.data.loaders import WindowDataset
from densitylab.data.packing import IGNORE_INDEX, PackedSplit, pack_documents, token_dtype, tokenize_and_pack
from densitylab.data.sources import HubSource, Source, SyntheticSource, TextSource
from densitylab.data.tokenizer import TokenizerFile, TokenizerSpec, TrainedBPE

#: name -> module, imported on first access (these modules import Lightning).
_LAZY = {
    "DataModule": "densitylab.data.datamodule",
    "UniformSequenceDataModule": "densitylab.data.uniform",
    "make_uniform_sequences": "densitylab.data.uniform",
}

__all__ = [
    "ArrowTexts",
    "Corpus",
    "DataModule",
    "WindowDataset",
    "IGNORE_INDEX",
    "PackedSplit",
    "pack_documents",
    "tokenize_and_pack",
    "token_dtype",
    "UniformSequenceDataModule",
    "make_uniform_sequences",
    "Source",
    "HubSource",
    "SyntheticSource",
    "TextSource",
    "TokenizerSpec",
    "TrainedBPE",
    "TokenizerFile",
    "EntityExtractor",
    "SyntheticEntities",
    "CapitalizedEntities",
    "GazetteerEntities",
    "SpacyEntities",
    "NoEntities",
]


def __getattr__(name: str) -> Any:
    """Import the Lightning-dependent names of :data:`_LAZY` on first access.

    Raises:
        AttributeError: for a name this package does not define.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
