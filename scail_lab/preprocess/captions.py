"""Captions for prepared examples: pluggable, never required.

SCAIL-2's prompt guidance: describe the resulting video (who, doing what, where), not an instruction; for
replacement, describe the new character's clothing and the objects it touches. `TemplateCaptioner` builds such
a sentence from what preprocessing knows; `OpenAICompatibleCaptioner` asks any OpenAI-compatible chat endpoint
(a local vLLM / llama.cpp / Ollama server, or a hosted one) to write or enhance it, and falls back to the template
when the server cannot be reached.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

log = logging.getLogger(__name__)
GUIDANCE = (
    "Write one caption for a generated video, in English, at most 60 words. Describe the resulting video as it "
    "will look: the character (appearance, clothing), what they do, and the scene. Do not write an instruction. "
    "For a character replacement, describe the new character's clothing and any objects they touch."
)


class TemplateCaptioner:
    name = "template"

    def caption(self, mode: str, num_people: int, hint: str = "") -> str:
        who = "a person" if num_people == 1 else f"{num_people} people"
        where = "in the scene of the reference image" if mode == "animate" else "in the scene of the driving video"
        text = f"{who.capitalize()} moves {where}, following the driving motion"
        return f"{text}; {hint.strip()}." if hint.strip() else text + "."


class OpenAICompatibleCaptioner:
    """POST {base_url}/chat/completions with `model`, the guidance as the system message and what is known as the
    user message; the API key from `api_key_env` (optional). Any failure falls back to the template caption."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"captioner base_url must be an http(s) URL, got {base_url!r}")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout = float(timeout)
        self.fallback = TemplateCaptioner()

    def caption(self, mode: str, num_people: int, hint: str = "") -> str:
        draft = self.fallback.caption(mode, num_people, hint)
        body = {"model": self.model, "temperature": 0.2, "messages": [
            {"role": "system", "content": GUIDANCE},
            {"role": "user", "content": f"Mode: {'replacement' if mode == 'replace' else 'animation'}. People: "
                                        f"{num_people}. Draft: {draft} Notes: {hint or 'none'}"}]}  # fmt: skip
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
            text = reply["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError) as err:
            log.warning("captioner %s failed (%s): using the template caption", self.base_url, err)
            return draft
        return " ".join(text.split()) or draft
