"""Where the LMM engine's settings come from: flags > environment > config file > defaults.

The config file is TOML (default ~/.config/genad/config.toml, or $GENAD_CONFIG, or --config),
with the settings under an [lmm] table whose keys are LMMConfig's field names:

    [lmm]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o"
    api_key_env = "MY_KEY_VAR"      # read the key from this variable (better than api_key = "...")
    max_image_side = 768
    budget_usd = 2.0
    [lmm.extra_headers]
    "X-Team" = "qa"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from genad.errors import ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
JSON_MODES = ("auto", "schema", "object", "off")
#: seconds per request when none is set: OpenAI's own servers answer within a minute; a local or
#: self-hosted server (llama.cpp, Ollama, vLLM on a small GPU, a CPU) can take minutes per answer
OPENAI_TIMEOUT = 60.0
OTHER_TIMEOUT = 300.0
#: the longest answer asked for when none is set (every call sends a limit: without one a small
#: local model can generate to its context limit)
DEFAULT_MAX_TOKENS = 1024
DETAILS = ("auto", "low", "high")


def default_cache_dir() -> Path:
    env = os.environ.get("GENAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genad" / "lmm"


def default_config_file() -> Path:
    env = os.environ.get("GENAD_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "genad" / "config.toml"


@dataclass
class LMMConfig:
    """Everything needed to talk to one OpenAI-compatible server with one model.

    cache_dir=None disables the response cache. price_table: a path to a TOML/JSON price file
    or a dict {model: {"input": $/1M, "output": $/1M}} merged over the built-in prices.
    json_mode: "auto" (JSON schema, then plain JSON mode, then free text, each step taken once
    per server and model when the server refuses the request format), "schema", "object"
    (plain JSON mode) or "off". prompts_dir: user templates overriding the packaged ones, file
    by file and key by key. timeout: seconds per request; None = 60 for OpenAI's servers, 300 for
    any other (see `request_timeout`). max_tokens: the longest answer of every call (a detector
    may ask for another). max_failures: requests failing in a row (after their retries) before a
    run stops. check_input: stop when the server's prompt-token count shows that it ignored the
    images or dropped the prompt (provider.InputIgnored); turn off for a server that does not
    count image tokens.
    """

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout: float | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    max_image_side: int = 768
    detail: str = "auto"
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    max_concurrency: int = 4
    requests_per_minute: float | None = None
    budget_usd: float | None = None
    max_retries: int = 4
    json_mode: str = "auto"
    price_table: str | Path | dict[str, Any] | None = None
    # not in the public contract, but useful: backoff base (tests make it tiny), prompts dir
    retry_base_delay: float = 0.5
    prompts_dir: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_failures: int = 3
    check_input: bool = True

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser()
        if self.prompts_dir is not None:
            self.prompts_dir = Path(self.prompts_dir).expanduser()
        if self.detail not in DETAILS:
            raise ConfigError(f"detail must be one of {', '.join(DETAILS)}, not {self.detail!r}")
        if self.json_mode not in JSON_MODES:
            raise ConfigError(f"json_mode must be one of {', '.join(JSON_MODES)}, not {self.json_mode!r}")
        if self.max_image_side < 64:
            raise ConfigError(f"max_image_side must be at least 64 pixels, not {self.max_image_side}")
        if self.max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        if self.timeout is not None and not (0 < self.timeout <= 3600):
            raise ConfigError("timeout must be between 0 and 3600 seconds")
        if not (1 <= self.max_tokens <= 1_000_000):
            raise ConfigError(f"max_tokens must be between 1 and 1000000, not {self.max_tokens}")
        if self.max_failures < 1:
            raise ConfigError("max_failures must be at least 1")
        self.base_url = self.base_url.rstrip("/")

    @property
    def is_openai(self) -> bool:
        """Whether the server is OpenAI's own (or Azure OpenAI's)."""
        from urllib.parse import urlparse

        host = (urlparse(self.base_url).hostname or "").lower()
        return host == "api.openai.com" or host.endswith(".openai.azure.com")

    @property
    def request_timeout(self) -> float:
        """Seconds per request: the one set, else 60 for OpenAI's servers and 300 for others."""
        if self.timeout is not None:
            return float(self.timeout)
        return OPENAI_TIMEOUT if self.is_openai else OTHER_TIMEOUT

    @classmethod
    def from_env(cls, config_file: str | Path | None = None, **overrides: Any) -> LMMConfig:
        """Build a config from (in order of precedence) `overrides` (flags; None values are
        ignored), GENAD_LMM_* variables, the config file, and defaults. Raises ConfigError with
        one line saying what to set when the model or the API key is missing."""
        values: dict[str, Any] = _read_config_file(config_file)
        key_env = values.pop("api_key_env", None)
        env_map = {
            "base_url": os.environ.get("GENAD_LMM_BASE_URL"),
            "model": os.environ.get("GENAD_LMM_MODEL"),
            "api_key": os.environ.get("GENAD_LMM_API_KEY"),
        }
        for k, v in env_map.items():
            if v:
                values[k] = v
        if not values.get("api_key"):
            values["api_key"] = (os.environ.get(key_env) if key_env else None) or os.environ.get("OPENAI_API_KEY")
        for k, v in overrides.items():
            if v is not None:
                values[k] = v
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown LMM setting(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(known))}")
        values.setdefault("base_url", DEFAULT_BASE_URL)
        if not values.get("model"):
            raise ConfigError(
                "no LMM model set: set GENAD_LMM_MODEL (e.g. gpt-4o), pass --model, or add "
                f'model = "..." under [lmm] in {default_config_file()}'
            )
        if not values.get("api_key"):
            raise ConfigError(
                "no LMM API key: set GENAD_LMM_API_KEY (or OPENAI_API_KEY); for a local server "
                "that needs none, set GENAD_LMM_API_KEY=none"
            )
        for k in ("timeout", "budget_usd", "requests_per_minute", "retry_base_delay"):
            if values.get(k) is not None:
                values[k] = float(values[k])
        for k in ("max_image_side", "max_concurrency", "max_retries", "max_tokens", "max_failures"):
            if values.get(k) is not None:
                values[k] = int(values[k])
        if isinstance(values.get("check_input"), str):
            values["check_input"] = values["check_input"].strip().lower() not in ("0", "false", "no", "off")
        return cls(**values)


def _read_config_file(config_file: str | Path | None) -> dict[str, Any]:
    explicit = config_file is not None
    path = Path(config_file).expanduser() if config_file is not None else default_config_file()
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist: check the --config path")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e} (it must be TOML)") from e
    section = data.get("lmm", {})
    if not isinstance(section, dict):
        raise ConfigError(f"[lmm] in {path} must be a table of settings")
    return dict(section)
