"""The data layer as Hydra builds it from conf/: every swap (source, tokenizer, entity extractor) by a
command-line override composes and instantiates; Python defaults equal the YAML values; bad values are
one-line ConfigErrors; the pure data modules never import Lightning or Hydra. In-process, no training,
no data preparation (except one small prepared module)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import check_python_defaults, import_target, run_command
from omegaconf import DictConfig, OmegaConf

from densitylab.data import (
    CapitalizedEntities,
    GazetteerEntities,
    HubSource,
    NoEntities,
    SpacyEntities,
    SyntheticEntities,
    SyntheticSource,
    TextSource,
    TokenizerFile,
    TrainedBPE,
)
from densitylab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose(*overrides: str, tmp: Path, cache: bool = True) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, data cache (``cache``) and run folder under ``tmp``."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    import densitylab.config  # noqa: F401  (registers ${cwd:})

    extra = [f"data.cache_dir={tmp / 'cache'}"] if cache else []
    extra.append(f"data.output_dir={tmp / 'run'}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return _compose(config_name="config", overrides=[*overrides, *extra])


def build(*overrides: str, tmp: Path, cache: bool = True):
    """Instantiate ``cfg.data`` as ``densitylab.run`` does."""
    from hydra.utils import instantiate

    return instantiate(compose(*overrides, tmp=tmp, cache=cache).data, _convert_="all")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    text = d / "a.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: Romeo met Juliet in Verona on day {i}." for i in range(60)))
    names = d / "names.txt"
    names.write_text("Romeo\nJuliet\n")
    from densitylab.data.tokenizer import train_bpe

    tok = d / "tokenizer.json"
    train_bpe([text.read_text()], vocab_size=300).save(str(tok))
    return {"text": str(text), "names": str(names), "tokenizer": str(tok)}


# ----------------------------------------------------------------------------- swaps by override
def test_default_data_is_the_synthetic_corpus_with_its_own_entities_and_bpe(tmp_path):
    from densitylab.data import DataModule

    dm = build(tmp=tmp_path)
    assert isinstance(dm, DataModule)
    assert dm.source == SyntheticSource()  # every generator setting at its YAML value (= the Python default)
    assert dm.recipe.tokenizer == TrainedBPE(vocab_size=4096, min_frequency=2)
    assert isinstance(dm.entities, SyntheticEntities)
    assert dm.block_size == compose(tmp=tmp_path).model.net.block_size
    assert dm.cache_dir == tmp_path / "cache" and dm.output_dir == tmp_path / "run"


SOURCE_SWAPS = {
    "data=text": (["data=text", "data.source.files={text}"], TextSource, CapitalizedEntities),
    "data/source=text": (["data/source=text", "data.source.files={text}"], TextSource, SyntheticEntities),
    "data=hub": (["data=hub", "data.source.name=someone/corpus"], HubSource, CapitalizedEntities),
    "data/source=hub": (["data/source=hub", "data.source.name=someone/corpus"], HubSource, SyntheticEntities),
    "data=tinystories": (["data=tinystories"], HubSource, CapitalizedEntities),
    "data=synthetic_smoke": (["data=synthetic_smoke"], SyntheticSource, SyntheticEntities),
    "data=text data/source=synthetic": (["data=text", "data/source=synthetic"], SyntheticSource, CapitalizedEntities),
    "data.source.n_people=100": (["data.source.n_people=100"], SyntheticSource, SyntheticEntities),
    "data.source._target_": (["data.source._target_=densitylab.data.sources.SyntheticSource"], SyntheticSource, None),
}


@pytest.mark.parametrize("name", list(SOURCE_SWAPS))
def test_source_swaps_by_override(name, files, tmp_path):
    overrides, source_cls, entities_cls = SOURCE_SWAPS[name]
    dm = build(*(o.format(**files) for o in overrides), tmp=tmp_path)
    assert type(dm.source) is source_cls
    if entities_cls is not None:
        assert type(dm.entities) is entities_cls
    if source_cls is TextSource:
        assert dm.source.files == files["text"]
        assert dm.source.cache_dir == f"{tmp_path / 'cache'}/hf_datasets"  # follows data.cache_dir
    if name == "data=tinystories":
        assert dm.source.name == "roneneldan/TinyStories"
    if name == "data=synthetic_smoke":
        assert (dm.source.n_people, dm.source.max_docs, dm.batch_size) == (200, 40, 16)
    if name == "data.source.n_people=100":
        assert dm.source.n_people == 100


ENTITY_SWAPS = {
    "synthetic": ([], SyntheticEntities),
    "capitalized": ([], CapitalizedEntities),
    "gazetteer": (["data.entities.path={names}"], GazetteerEntities),
    "spacy": ([], SpacyEntities),
    "none": ([], NoEntities),
}


@pytest.mark.parametrize("option", list(ENTITY_SWAPS))
def test_entity_extractor_swaps_by_override(option, files, tmp_path):
    extra, cls = ENTITY_SWAPS[option]
    extra = [e.format(**files) for e in extra]
    for data in (["data=text", f"data.source.files={files['text']}"], []):  # on text and on the synthetic default
        dm = build(*data, f"data/entities={option}", *extra, tmp=tmp_path)
        assert type(dm.entities) is cls and dm.entities.method == option
    if option == "gazetteer":
        assert dm.entities.path == str(Path(files["names"]).resolve())
    if option == "spacy":
        assert dm.entities.model == "en_core_web_sm"


def test_gazetteer_without_a_names_file_fails_at_composition_or_construction(tmp_path):
    with pytest.raises(Exception, match="data.entities.path|path"):
        build("data/entities=gazetteer", tmp=tmp_path)
    with pytest.raises(ConfigError, match="data.entities.path='/nope.txt' does not exist"):
        GazetteerEntities(path="/nope.txt")


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ([], TrainedBPE(vocab_size=4096, min_frequency=2)),
        (["tokenizer.vocab_size=512", "tokenizer.min_frequency=3"], TrainedBPE(vocab_size=512, min_frequency=3)),
        (["tokenizer=file", "tokenizer.path={tokenizer}"], "file"),
        (["experiment=smoke"], TrainedBPE(vocab_size=512, min_frequency=2)),
        (["tokenizer.sample_chars=null"], TrainedBPE(vocab_size=4096, min_frequency=2, sample_chars=None)),
    ],
    ids=["bpe", "bpe-settings", "file", "smoke", "no-sample-cap"],
)
def test_tokenizer_swaps_by_override(overrides, want, files, tmp_path):
    dm = build(*(o.format(**files) for o in overrides), tmp=tmp_path)
    if want == "file":
        assert dm.recipe.tokenizer == TokenizerFile(path=files["tokenizer"])
    else:
        assert dm.recipe.tokenizer == want


def test_uniform_data_still_builds(tmp_path):
    from densitylab.data import UniformSequenceDataModule

    dm = build("data=uniform", tmp=tmp_path, cache=False)
    assert isinstance(dm, UniformSequenceDataModule) and dm.vocab_size == 256


def test_file_tokenizer_prepares_with_the_loaded_tokenizer(files, tmp_path):
    """``tokenizer=file`` through the whole preparation (it crashed on ``int(None)`` before the spec objects)."""
    dm = build(
        "data=text",
        f"data.source.files={files['text']}",
        "tokenizer=file",
        f"tokenizer.path={files['tokenizer']}",
        "data.block_size=16",
        "data.canaries.repetitions=[]",
        "data.progress=false",
        tmp=tmp_path,
    )
    dm.setup()
    assert dm.vocab_size == 300 and dm.meta["tokenizer_key"].startswith("file-")
    assert (tmp_path / "run" / "tokenizer.json").read_text() == Path(files["tokenizer"]).read_text()


# ----------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tokenizer.vocab_size=100"], "tokenizer.vocab_size=100: expected an integer >= 258"),
        (["tokenizer.min_frequency=-1"], "tokenizer.min_frequency=-1: expected an integer >= 0"),
        (["tokenizer.sample_chars=-5"], "tokenizer.sample_chars=-5: expected an integer >= 0"),
        (["tokenizer=file", "tokenizer.path=/no/tokenizer.json"], "tokenizer.path='/no/tokenizer.json' does not"),
        (["data.source.n_people=0"], "data.source: n_people must be an integer >= 1, got 0"),
        (["data.source.comentions=[3,1]"], "data.source: comentions must be a"),
        (["data.source=text"], "data.source='text': expected a source object"),  # the old key style
        (["data.entities=capitalized"], "data.entities='capitalized': expected an entity extractor"),
        (["data.batch_size=0"], "data.batch_size=0: expected a positive integer"),
        (["~data.canaries.per_group"], "data.canaries lacks \\['per_group'\\]"),
        (["data/entities=spacy", "data.entities.model="], "data.entities.model='': expected a spaCy pipeline"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_values_are_one_line_config_errors(overrides, message, tmp_path):
    """The ConfigError raised inside Hydra's (nested) instantiation is the cause ``densitylab.run`` re-raises."""
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException) as info:
        build(*overrides, tmp=tmp_path)
    cause = info.value.__cause__
    assert isinstance(cause, ConfigError), repr(info.value)
    assert "\n" not in str(cause)
    assert re.search(message, str(cause)), str(cause)


# ----------------------------------------------------------------------------- defaults live in conf/
def _targets_in_conf() -> list[tuple[Path, DictConfig]]:
    """Every YAML file under conf/data/ and conf/tokenizer/ that names a ``_target_``, loaded raw."""
    out = []
    for f in sorted([*(CONF / "data").rglob("*.yaml"), *(CONF / "tokenizer").glob("*.yaml")]):
        node = OmegaConf.load(f)
        if isinstance(node, DictConfig) and "_target_" in node:
            out.append((f, node))
    return out


TARGET_FILES = _targets_in_conf()


@pytest.mark.parametrize(("path", "node"), TARGET_FILES, ids=[str(p.relative_to(CONF)) for p, _ in TARGET_FILES])
def test_python_defaults_equal_the_yaml_values(path, node):
    """A constructor either has no default for a setting its YAML file sets, or the same value (None where
    the YAML interpolates it or leaves it ``???``); every argument without a default is set by the YAML."""
    assert not (problems := check_python_defaults(import_target(node._target_), node, str(path.relative_to(CONF)))), (
        problems
    )


def test_generator_defaults_equal_the_synthetic_source_yaml():
    from densitylab.data.synthetic import generate_synthetic

    node = OmegaConf.load(CONF / "data" / "source" / "synthetic.yaml")
    problems = check_python_defaults(generate_synthetic, node, "generate_synthetic")
    assert not [p for p in problems if "progress" not in p], problems


def test_every_text_data_option_is_base_plus_nested_targets(tmp_path):
    for option in ("synthetic", "synthetic_smoke", "text", "hub", "tinystories", "base"):
        cfg = compose(f"data={option}", tmp=tmp_path)
        for key in ("source", "entities", "tokenizer"):
            assert "_target_" in cfg.data[key], (option, key)
        assert cfg.data._target_ == "densitylab.data.DataModule"


# ----------------------------------------------------------------------------- import rules
PURE = [
    "densitylab.data",
    "densitylab.data.packing",
    "densitylab.data.corpus",
    "densitylab.data.sources",
    "densitylab.data.tokenizer",
    "densitylab.data.entities",
    "densitylab.data.canaries",
    "densitylab.data.loaders",
    "densitylab.data.prepare",
    "densitylab.data.synthetic",
    "densitylab.data.synthetic.generate",
]


def test_pure_data_modules_import_without_lightning_or_hydra():
    code = (
        "import importlib, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'lightning_fabric', "
        "'pytorch_lightning', 'hydra'})\n"
        "print(' '.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    proc = run_command([sys.executable, "-c", code], timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"pure data modules loaded {proc.stdout.strip()}: {proc.stderr[-2000:]}"


def test_lightning_names_of_the_package_load_on_first_use():
    import densitylab.data as data

    assert data.DataModule.__module__ == "densitylab.data.datamodule"
    assert data.UniformSequenceDataModule.__module__ == "densitylab.data.uniform"
    with pytest.raises(AttributeError, match="no_such_name"):
        data.no_such_name  # noqa: B018
