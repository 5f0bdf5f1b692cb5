"""The reward service as the reward of TRL, veRL and OpenRLHF runs: a few lines over the client.

Each adapter holds the service's URL and client options and opens its ``RewardClient`` on
first use in each process (a forked worker or a pickled copy opens its own: connections are
not shared across processes), then keeps it for the connection reuse.

Every completion is sent, empty ones too: the service scores an empty response (a policy that
stops at once gets a reward like any other).

The signatures follow each framework's source (read, not copied):

- TRL ``GRPOTrainer`` (trl/trainer/grpo_trainer.py): a custom reward function is called with
  keyword arguments ``prompts=``, ``completions=``, the dataset's other columns and a few
  extras (``completion_ids``, ``trainer_state`` in recent versions), and returns one float per
  completion, or None where it does not apply. Its ``__name__`` names the reward in the logs.
  Conversational data: each prompt is a list of ``{"role", "content"}`` messages and each
  completion a list of assistant messages.
- veRL custom reward function (``custom_reward_function.path`` / ``.name`` in the trainer
  config, loaded from a file; verl/workers/reward_manager/naive.py calls it): ``compute_score(
  data_source, solution_str, ground_truth, extra_info)`` returns a float, with the config's
  ``reward_kwargs`` passed as further keywords. The batch manager (``reward_manager=batch``,
  verl/workers/reward_manager/batch.py) calls ``compute_score(data_sources=, solution_strs=,
  ground_truths=, extra_infos=)`` and wants a list: ``make_verl_batch_compute_score``.
- OpenRLHF remote reward model (``--remote_rm_url``; openrlhf/cli/serve_rm.py is the reference
  server): POST ``{"query": [prompt + response texts], "prompts", "labels"}``, answer
  ``{"rewards", "scores", "extra_logs"}``; the service's /get_reward speaks it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ramo_stream.client.protocol import DEFAULT_URL, ClientOptions, PromptLike, content_text
from ramo_stream.client.sync_client import RewardClient
from ramo_stream.core.propositions import RESPONSE_TYPES

ClientOrUrl = RewardClient | str


class _ServiceBound:
    """A RewardClient per process, opened on first use; pickles without it."""

    def __init__(self, client_or_url: ClientOrUrl, client_kwargs: dict[str, Any]) -> None:
        self._client: RewardClient | None = None
        self._pid = os.getpid()
        if isinstance(client_or_url, RewardClient):
            if client_kwargs:
                raise TypeError(f"client options {sorted(client_kwargs)} given with a client;"
                                " set them on the RewardClient instead")  # fmt: skip
            self._options = client_or_url.options
            self._client = client_or_url
        else:
            self._options = ClientOptions(client_or_url, **client_kwargs)  # fails fast if bad

    @property
    def client(self) -> RewardClient:
        if self._client is None or self._pid != os.getpid():
            self._client = RewardClient(**dataclasses.asdict(self._options))
            self._pid = os.getpid()
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}


RESPONSE_TYPE_KEY = "response_type"


def rbr_types(
    rbr: bool | None, values: Sequence[Any] | None, n: int, where: str
) -> list[str | None] | None:
    """The response types to send with ``n`` items: ``values`` (one per item) when given;
    None when absent and RBR is not asked for (the service's default decides). Asked for
    (``rbr=True``) without them is a ValueError that says where they come from."""
    if values is None:
        if rbr:
            raise ValueError(
                f"rbr=True needs each sample's response type (one of"
                f" {', '.join(RESPONSE_TYPES)}), read from {where}; add it to the data,"
                " or pass rbr=False"
            )
        return None
    types = [None if v is None else str(v) for v in values]
    if len(types) != n:
        raise ValueError(f"{len(types)} response types ({where}) for {n} completions")
    return types


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """A TRL completion as text: the string, or the content of its assistant messages."""
    if isinstance(completion, str):
        return completion
    messages = [m for m in completion if m.get("role", "assistant") == "assistant"]
    return "\n".join(content_text(m.get("content", "")) for m in messages or completion)


class TrlRewardFunction(_ServiceBound):
    """TRL reward function: ``f(prompts, completions, **kwargs) -> list[float]``.

    Prompts and completions may be strings (standard data) or chat messages (conversational
    data: the prompt's messages go to the service as the conversation, the completion's
    assistant content as the response). All completions of a call go in one ``score`` call.
    Extra dataset columns in ``kwargs`` are ignored, except the ``response_type`` column
    (``response_type_key``), which goes with each item for the Rule-Based Reward.
    ``rbr``: True adds the Rule-Based Reward, False leaves it out, None takes the service's
    default (``serve.rbr``).
    """

    def __init__(
        self,
        client_or_url: ClientOrUrl,
        name: str = "ramo_reward",
        model_version: int | None = None,
        rbr: bool | None = None,
        response_type_key: str = RESPONSE_TYPE_KEY,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(client_or_url, client_kwargs)
        self.__name__ = name
        self.model_version = model_version
        self.rbr = rbr
        self.response_type_key = response_type_key

    def __call__(
        self, prompts: Sequence[PromptLike], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        items = [(p, completion_text(c)) for p, c in zip(prompts, completions, strict=True)]
        types = rbr_types(self.rbr, kwargs.get(self.response_type_key), len(items),
                          f"the dataset column {self.response_type_key!r}")  # fmt: skip
        return self.client.score(
            items, model_version=self.model_version, response_types=types, rbr=self.rbr
        ).rewards


def make_trl_reward_fn(
    client_or_url: ClientOrUrl = DEFAULT_URL,
    *,
    name: str = "ramo_reward",
    model_version: int | None = None,
    rbr: bool | None = None,
    response_type_key: str = RESPONSE_TYPE_KEY,
    **client_kwargs: Any,
) -> TrlRewardFunction:
    """A reward function for ``GRPOTrainer(reward_funcs=[...])``.

    ``client_or_url``: a RewardClient, or the service's URL (then ``client_kwargs`` are
    RewardClient's options: api_token, timeout_s, retries, batch_size, ...). ``name``: the
    reward's name in TRL's logs. ``model_version``: pin a loaded version (default: current).
    ``rbr``: add the Rule-Based Reward (True), leave it out (False), or the service's default
    (None); its response types come from the dataset column ``response_type_key``.
    """
    return TrlRewardFunction(
        client_or_url, name, model_version, rbr, response_type_key, **client_kwargs
    )


_PROMPT_KEYS = ("prompt", "question")


def _verl_prompt(extra_info: Any, default_prompt: str) -> PromptLike:
    if isinstance(extra_info, Mapping):
        for key in _PROMPT_KEYS:
            value = extra_info.get(key)
            if isinstance(value, str) and value.strip():
                return value
            if isinstance(value, Sequence) and not isinstance(value, str) and value:
                return list(value)  # chat messages
    if not default_prompt.strip():
        raise ValueError(
            "veRL passes no prompt to compute_score and this sample's extra_info has no"
            f" 'prompt' or 'question' (extra_info={extra_info!r:.120}); put the prompt in"
            " extra_info['prompt'] when preparing the data, or pass default_prompt="
        )
    return default_prompt


class VerlComputeScore(_ServiceBound):
    """veRL ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float``.

    veRL does not pass the prompt in this signature. The reward is computed on ``solution_str``
    as the response, with ``extra_info["prompt"]`` (a string or chat messages; else
    ``extra_info["question"]``, which veRL's example preprocessors store) as the prompt when
    present, else ``default_prompt``; with neither, it raises and says so. ``data_source`` and
    ``ground_truth`` are not used: the reward model judges the response alone. ``rbr`` as in
    ``TrlRewardFunction``; the response type comes from ``extra_info["response_type"]``.
    """

    def __init__(
        self,
        client_or_url: ClientOrUrl,
        model_version: int | None = None,
        default_prompt: str = "",
        rbr: bool | None = None,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(client_or_url, client_kwargs)
        self.model_version = model_version
        self.default_prompt = default_prompt
        self.rbr = rbr

    def __call__(
        self,
        data_source: Any,
        solution_str: str,
        ground_truth: Any,
        extra_info: Any = None,
        **kwargs: Any,
    ) -> float:
        return self.batch([data_source], [solution_str], [ground_truth], [extra_info])[0]

    def batch(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """The batch reward manager's form: one float per solution, in one ``score`` call."""
        infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
        if len(infos) != len(solution_strs):
            raise ValueError(f"{len(infos)} extra_infos for {len(solution_strs)} solution_strs")
        prompts = [_verl_prompt(info, self.default_prompt) for info in infos]
        items = list(zip(prompts, solution_strs, strict=True))
        found = [i.get(RESPONSE_TYPE_KEY) if isinstance(i, Mapping) else None for i in infos]
        types = rbr_types(self.rbr, found if any(t is not None for t in found) else None,
                          len(items), "extra_info['response_type']")  # fmt: skip
        return self.client.score(
            items, model_version=self.model_version, response_types=types, rbr=self.rbr
        ).rewards


def make_verl_compute_score(
    client_or_url: ClientOrUrl = DEFAULT_URL,
    *,
    model_version: int | None = None,
    default_prompt: str = "",
    rbr: bool | None = None,
    **client_kwargs: Any,
) -> VerlComputeScore:
    """veRL's custom reward function. In a file, say ``ramo_reward.py``::

        from ramo_stream.client.adapters import make_verl_compute_score
        compute_score = make_verl_compute_score("http://127.0.0.1:8000")

    then ``custom_reward_function.path=ramo_reward.py custom_reward_function.name=compute_score``.
    veRL's default (naive) reward manager calls it once per sample, so one HTTP request per
    sample; ``make_verl_batch_compute_score`` with ``reward_model.reward_manager=batch`` sends
    the whole batch at once. ``default_prompt``: the prompt of samples whose extra_info holds
    none (see ``VerlComputeScore``). ``rbr``: add the Rule-Based Reward (True), leave it out
    (False) or the service's default (None); put each sample's response type in
    ``extra_info["response_type"]``.
    """
    return VerlComputeScore(client_or_url, model_version, default_prompt, rbr, **client_kwargs)


def make_verl_batch_compute_score(client_or_url: ClientOrUrl = DEFAULT_URL, **kwargs: Any) -> Any:
    """veRL's batch form (``reward_model.reward_manager=batch``): ``compute_score(
    data_sources, solution_strs, ground_truths, extra_infos) -> list[float]``. Arguments as
    ``make_verl_compute_score``."""
    return make_verl_compute_score(client_or_url, **kwargs).batch


def openrlhf_remote_rm_url(client_or_url: ClientOrUrl = DEFAULT_URL) -> str:
    """The value of OpenRLHF's ``--remote_rm_url`` for this service: ``{base}/get_reward``.

    For example, with ``ramo serve`` on the default address::

        python -m openrlhf.cli.train_ppo_ray ... \\
            --remote_rm_url http://127.0.0.1:8000/get_reward

    OpenRLHF sends each sample as one text (``query``: the prompt and the response through the
    policy's chat template) and, in recent versions, its ``prompts``; the service scores the
    rest of the query as the response to that prompt, or the whole query when no prompt comes
    with it (``reward_protocol.split_query``). OpenRLHF's request carries no
    Authorization header, so point it at a service that does not require a token (the default
    127.0.0.1 bind).
    """
    base = client_or_url.base_url if isinstance(client_or_url, RewardClient) else client_or_url
    return base.rstrip("/") + "/get_reward"
