"""Workers pick up a promoted (or rolled-back) model without a restart or a dropped chat.

Every few seconds each worker asks which generator it should serve and in which answer mode
(`served_generator_model`, `answer_mode`: the registry's pointer and the evaluation records).
When that changes it loads the new model beside the old one, warms it up, and swaps the chat
service's assistant: turns that start afterwards use the new one, turns in flight hold the
old assistant and finish on it, and the old model is closed once none of them is generating.
A model that fails to load is logged and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.assistant import AnswerMode, Assistant
from bot.generation.generator import Generator, TransformersGenerator
from bot.generation.model_store import ModelUnavailable
from bot.generation.remote import OpenAICompatibleGenerator
from server.chat import ChatService
from server.components import answer_mode, build_generator, served_generator_model
from server.settings import Settings

log = logging.getLogger("supportbot.model_swap")


class GeneratorSwap:
    def __init__(
        self,
        settings: Settings,
        service: ChatService,
        make_assistant: Callable[[Generator | None, AnswerMode], Assistant],
        generator: Generator | None,
        on_swap: Callable[[Generator | None, AnswerMode], None] = lambda generator, mode: None,
    ) -> None:
        self._on_swap = on_swap
        self._settings = settings
        self._service = service
        self._make_assistant = make_assistant
        self.generator = generator
        self._serving = self._wanted()
        self._failed: tuple[str, AnswerMode] | None = None

    def _wanted(self) -> tuple[str, AnswerMode]:
        return served_generator_model(self._settings)[1], answer_mode(self._settings).mode

    async def check(self) -> bool:
        """Swap if the registry or the evaluation records changed what this worker should serve."""
        wanted = await asyncio.to_thread(self._wanted)
        if wanted == self._serving or wanted == self._failed:
            return False
        model, mode = wanted
        generator = build_generator(self._settings) if mode is AnswerMode.GENERATIVE else None
        try:
            if isinstance(generator, TransformersGenerator):
                await asyncio.to_thread(generator.warm_up)
            assistant = self._make_assistant(generator, mode)
            await asyncio.to_thread(assistant.warm_up)
        except (ModelUnavailable, OSError, ValueError, RuntimeError) as exc:
            log.error("cannot load %s (%s); %s keeps serving", model, exc, self._serving[0])
            self._failed = wanted
            await _close(generator)
            return False
        except asyncio.CancelledError:
            # Stopping while it loads: the load goes on in its pool thread. Closing waits for it
            # and stops the batching thread it started, which would otherwise hold up the exit.
            await _close(generator)
            raise
        old_assistant, old_generator = self._service.assistant, self.generator
        self._service.assistant, self.generator, self._serving, self._failed = assistant, generator, wanted, None
        self._on_swap(generator, mode)
        log.info("now answering with %s in %s mode (was %s)", assistant.model_id, mode.value, old_assistant.model_id)
        deadline = asyncio.get_running_loop().time() + self._settings.generator_timeout_s + 5
        try:
            while old_assistant.generating and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)  # answers in flight finish on the old model
        finally:  # a shutdown during the wait too: nothing else would close the old one
            await _close(old_generator)
        return True

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:  # a bad pointer file must not stop the watch
                log.exception("checking the promoted model failed; trying again in %.0f s", interval_s)

    async def close(self) -> None:
        await _close(self.generator)


async def _close(generator: Generator | None) -> None:
    if isinstance(generator, TransformersGenerator):
        await asyncio.to_thread(generator.close)
    elif isinstance(generator, OpenAICompatibleGenerator):
        await generator.aclose()
