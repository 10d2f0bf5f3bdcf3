"""The stage registry: every stage a pipeline can name, by its registered name.

A stage registers itself: a class of a module in this package that sets its own `name`, once
that module is imported below (one line per stage). The registry checks each stage's declared
contract as it is built (a typed Config, reads, writes and reasons), and the engines hold every
answer to it (curate.engines.plan: a reason or a new column a stage does not declare fails the run).
"""

import pyarrow as pa

from curate.stage import Stage, StageConfig
from curate.stages.caption import Caption as Caption
from curate.stages.caption_filter import CaptionFilter as CaptionFilter
from curate.stages.clip_score import ClipScore as ClipScore
from curate.stages.concept_balance import ConceptBalance as ConceptBalance
from curate.stages.concept_match import ConceptMatch as ConceptMatch
from curate.stages.decode import Decode as Decode
from curate.stages.decontaminate import Decontaminate as Decontaminate
from curate.stages.decontaminate_embedding import DecontaminateEmbedding as DecontaminateEmbedding
from curate.stages.download import Download as Download
from curate.stages.embed import Embed as Embed
from curate.stages.embed_dedup import EmbedDedup as EmbedDedup
from curate.stages.exact_dedup import ExactDedup as ExactDedup
from curate.stages.face_blur import FaceBlur as FaceBlur
from curate.stages.file_size import FileSize as FileSize
from curate.stages.image_based_filter import ImageBasedFilter as ImageBasedFilter
from curate.stages.image_size import ImageSize as ImageSize
from curate.stages.language import Language as Language
from curate.stages.near_dedup import NearDedup as NearDedup
from curate.stages.nsfw import Nsfw as Nsfw
from curate.stages.pii import Pii as Pii
from curate.stages.recaption import Recaption as Recaption
from curate.stages.resize import Resize as Resize
from curate.stages.semdedup import SemDedup as SemDedup
from curate.stages.synset_filter import SynsetFilter as SynsetFilter
from curate.stages.text_filter import TextFilter as TextFilter


def _defined_here(base: type[Stage]) -> list[type[Stage]]:
    """The subclasses of `base`, at any depth, defined in this package's modules with a `name` of their own."""
    found = []
    for cls in base.__subclasses__():
        if cls.__module__.startswith(__name__ + ".") and "name" in vars(cls):
            found.append(cls)
        found += _defined_here(cls)
    return found


def contract_errors(cls: type[Stage]) -> list[str]:
    """What is wrong with a stage class's declared contract (empty when nothing is)."""
    errors = []
    config = getattr(cls, "Config", None)
    if not isinstance(config, type) or not issubclass(config, StageConfig):
        errors.append(f"Config is {config!r}, expected a StageConfig subclass")
    for field in ("reads", "reasons"):
        value = getattr(cls, field)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            errors.append(f"{field} is {value!r}, expected a tuple of column names" if field == "reads"
                          else f"{field} is {value!r}, expected a tuple of reason codes")
    if not isinstance(cls.writes, dict) or not all(isinstance(k, str) and isinstance(t, pa.DataType)
                                                   for k, t in cls.writes.items()):
        errors.append(f"writes is {cls.writes!r}, expected a dict of column name -> Arrow type")
    if not cls.__doc__:
        errors.append("no docstring (`curate stages` shows its first line)")
    return [f"stage {cls.name!r} ({cls.__module__}.{cls.__qualname__}): {e}" for e in errors]


def build_registry(stages: list[type[Stage]]) -> dict[str, type[Stage]]:
    """Stages by name, sorted; a name taken twice or a broken contract is an error naming the classes."""
    registry: dict[str, type[Stage]] = {}
    errors = [e for cls in stages for e in contract_errors(cls)]
    for cls in stages:
        if cls.name in registry:
            other = registry[cls.name]
            errors.append(f"stage name {cls.name!r} is taken twice: {other.__module__}.{other.__qualname__} and "
                          f"{cls.__module__}.{cls.__qualname__}")
        registry[cls.name] = cls
    if errors:
        raise TypeError("\n".join(errors))
    return dict(sorted(registry.items()))


REGISTRY: dict[str, type[Stage]] = build_registry(_defined_here(Stage))
