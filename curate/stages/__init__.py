"""The stage registry: every stage a pipeline can name, by its registered name."""

from curate.stage import Stage
from curate.stages.caption import Caption
from curate.stages.caption_filter import CaptionFilter
from curate.stages.clip_score import ClipScore
from curate.stages.concept_balance import ConceptBalance
from curate.stages.concept_match import ConceptMatch
from curate.stages.decode import Decode
from curate.stages.decontaminate import Decontaminate
from curate.stages.decontaminate_embedding import DecontaminateEmbedding
from curate.stages.download import Download
from curate.stages.embed import Embed
from curate.stages.embed_dedup import EmbedDedup
from curate.stages.exact_dedup import ExactDedup
from curate.stages.face_blur import FaceBlur
from curate.stages.file_size import FileSize
from curate.stages.image_based_filter import ImageBasedFilter
from curate.stages.image_size import ImageSize
from curate.stages.language import Language
from curate.stages.near_dedup import NearDedup
from curate.stages.nsfw import Nsfw
from curate.stages.pii import Pii
from curate.stages.recaption import Recaption
from curate.stages.resize import Resize
from curate.stages.semdedup import SemDedup
from curate.stages.synset_filter import SynsetFilter
from curate.stages.text_filter import TextFilter

REGISTRY: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (Download, Decode, ImageSize, FileSize, Caption, Language, SynsetFilter, TextFilter, Resize, ExactDedup, NearDedup, Decontaminate, ClipScore,
                ConceptMatch, ConceptBalance,
                Embed, EmbedDedup, SemDedup, ImageBasedFilter, DecontaminateEmbedding,
                Recaption, CaptionFilter, Nsfw, FaceBlur, Pii)
}
