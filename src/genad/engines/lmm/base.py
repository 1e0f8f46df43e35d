"""What every detector that asks a multimodal model shares: one option set, one client, one
set of prompt templates, one rule for calls that must stop a run.

    class Mine(LMMDetectorBase):
        name = "mine"
        def predict(self, samples): ... self.client.chat_many(...) ...

The connection options are LMMConfig's fields (model, base_url, api_key, timeout, budget_usd,
cache_dir, max_image_side...), each settable on any LMM-backed detector (`create("ts-lmm",
budget=2)`, `-p model=gpt-4o`); the ones left unset come from GENAD_LMM_* variables, the config
file and LMMConfig's defaults (LMMConfig.from_env). A ready `config=` (LMMConfig, or a config
file's path) or `client=` (LMMClient) may be given in Python instead (stored as the options
lmm_config and lmm_client; `.client` is the client in use). The API key is a secret
option: it never appears in `params`, repr, run folders or reports. The client is built on
first use, so that a detector can be created, listed and checked without a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from genad.detector import Capabilities, Detector, param, raw_threshold_param, threshold_param
from genad.engines.lmm.config import DETAILS, JSON_MODES, LMMConfig
from genad.errors import ConfigError, GenadError
from genad.types import Knowledge, Sample

if TYPE_CHECKING:
    from genad.engines.lmm.provider import LMMClient
    from genad.engines.lmm.templates import Templates

#: the LMMConfig fields a detector option sets (every field: one option set for all)
CONNECTION = tuple(f.name for f in fields(LMMConfig))


class LMMDetectorBase(Detector):
    """The options, client and templates of an LMM-backed detector (see the module doc)."""

    # -- the connection: LMMConfig's fields; None = from the environment / config file ----------
    model: str | None = param(None, "str", doc="model name (GENAD_LMM_MODEL)")
    base_url: str | None = param(None, "str", doc="OpenAI-compatible server (GENAD_LMM_BASE_URL)")
    api_key: str | None = param(None, "str", secret=True, doc="API key (better: GENAD_LMM_API_KEY)")
    timeout: float | None = param(
        None, "float", low=0.1, high=3600.0, doc="seconds per request (default 60 for OpenAI, 300 for others)"
    )
    extra_headers: dict | None = param(None, "dict", doc="extra HTTP headers")
    max_image_side: int | None = param(None, "int", low=64, high=4096, doc="images are downscaled to this side")
    detail: str | None = param(None, "str", choices=(*DETAILS, None), doc="image detail: auto, low or high")
    cache_dir: str | None = param(None, "str", doc="response cache folder (GENAD_CACHE_DIR)")
    max_concurrency: int | None = param(None, "int", low=1, high=64, aliases=("concurrency",), doc="requests at once")
    requests_per_minute: float | None = param(None, "float", low=0.01, high=1e6, aliases=("rpm",), doc="rate limit")
    budget_usd: float | None = param(
        None, "float", low=0.0, high=1e6, aliases=("budget",), doc="stop before spending more"
    )
    max_retries: int | None = param(None, "int", low=0, high=20, doc="retries of a failed request")
    json_mode: str | None = param(
        None, "str", choices=(*JSON_MODES, None), doc="structured answers: auto, schema, object, off"
    )
    price_table: Any = param(None, "any", aliases=("prices",), doc="price file (TOML/JSON) or {model: {input, output}}")
    retry_base_delay: float | None = param(None, "float", low=0.0, high=60.0, doc="backoff base, seconds")
    prompts_dir: str | None = param(None, "str", aliases=("prompts",), doc="your prompt templates (NAME.toml)")
    max_failures: int | None = param(None, "int", low=1, high=1000, doc="failed requests in a row that stop a run")
    check_input: bool | None = param(
        None, "bool", doc="stop when the server ignored the images or dropped the prompt (default true)"
    )
    # -- where the rest comes from -----------------------------------------------------------
    config_file: str | None = param(None, "str", doc="config file with an [lmm] table (GENAD_CONFIG)")
    lmm_config: Any = param(
        None, "any", public=False, aliases=("config",), doc="a ready LMMConfig, or a config file's path"
    )
    lmm_client: Any = param(None, "any", public=False, aliases=("client",), doc="a ready LMMClient")
    # -- the request ---------------------------------------------------------------------------
    max_tokens: int | None = param(
        None, "int", low=1, high=1_000_000, doc="longest answer, in tokens (default 1024; reasoning models need more)"
    )
    batch_size: int = param(8, low=1, high=10_000, doc="samples per predict() when a run streams them")

    def capabilities(self) -> Capabilities:
        return Capabilities(self.modalities, self.zero_shot, chunk_size=self.batch_size)

    def _configure(self) -> None:
        self._built_client: LMMClient | None = None  # options changed: build the client anew

    # -- the client ----------------------------------------------------------------------------
    @property
    def client(self) -> LMMClient:
        """The client: the one given (`client=`), else one built from `config=`, the options
        and the environment (once, on first use)."""
        if self.lmm_client is not None:
            return self.lmm_client
        built = getattr(self, "_built_client", None)
        if built is None:
            from genad.engines.lmm.provider import LMMClient

            config = self.lmm_config
            config_file = self.config_file
            if isinstance(config, str):  # -p config=FILE from the command line
                config, config_file = None, config
            if config is None:
                settings = {k: getattr(self, k) for k in CONNECTION if getattr(self, k) is not None}
                config = LMMConfig.from_env(config_file, **settings)
            built = LMMClient(config)
            self._built_client = built
        return built

    @property
    def templates(self) -> Templates:
        from genad.engines.lmm.templates import templates_for

        return templates_for(self.client)

    @staticmethod
    def stop_error(replies: Sequence[Any]) -> Exception | None:
        """The first reply that must stop the run rather than fail one sample: a spent budget,
        a failing server, ignored images (provider.LMMStop) or a wrong configuration (key, URL,
        model) would fail every later sample the same way. Answers paid for so far are cached,
        so a re-run after fixing it costs nothing for them."""
        return next((r for r in replies if is_stop(r)), None)


def is_stop(e: Any) -> bool:
    """Whether an exception must stop a run rather than fail one sample (see stop_error)."""
    from genad.engines.lmm.provider import LMMStop

    return isinstance(e, (LMMStop, ConfigError))


def _defect_types(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(s).strip() for s in value if str(s).strip())
    raise GenadError(f"defect_types must be names such as crack,scratch; got {value!r}")


class LMMImageDetector(LMMDetectorBase):
    """An LMM-backed image detector: the class and what a person knows about it."""

    modalities = ("image",)

    class_name: str | None = param(None, "str", doc="what the images show (e.g. bottle); a sample's own wins")
    normal_standards: str | None = param(None, "str", doc="what normal looks like")
    defect_types: tuple[str, ...] = param((), "any", convert=_defect_types, doc="known defect types")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()

    def knowledge_for(self, sample: Sample) -> Knowledge:
        """The sample's own knowledge when it has some, else the detector's."""
        k = sample.knowledge
        if k is not None and not k.is_empty():
            return k
        return self.knowledge

    @property
    def knowledge(self) -> Knowledge:
        return Knowledge(normal_standards=self.normal_standards, defect_types=list(self.defect_types))
