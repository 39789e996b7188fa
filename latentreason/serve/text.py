"""A reply's text as its tokens arrive: incremental detokenisation and stop strings.

Each new token is decoded together with the few tokens before it (a window that moves on whenever text is
complete), so a word split over tokens, or a character over byte tokens, appears once it is whole, and the
cost per token does not grow with the reply. Text that could be the start of a stop string is held back until
it is known not to be one; a stop string ends the reply and is not part of it (as OpenAI's `stop` does).
"""

from __future__ import annotations

INCOMPLETE = "\ufffd"  # what decoding gives for a character whose bytes have not all arrived


class TextStream:
    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.window = 0  # tokens before this one are behind the window
        self.read = 0  # tokens before this one are in `text`
        self.text = ""  # the reply so far (up to a stop string, when one was found)
        self.sent = 0  # characters of `text` already handed out by `take`
        self.stopped = False  # a stop string was found

    def push(self, token: int) -> None:
        """Add a visible token (special tokens decode to nothing)."""
        if self.stopped:
            return
        self.ids.append(token)
        self._read(final=False)

    def _read(self, final: bool) -> None:
        """Move the tokens after `read` into the text once they decode to whole characters (or at the end)."""
        before = self._decode(self.ids[self.window : self.read])
        now = self._decode(self.ids[self.window :])
        if len(now) > len(before) and (final or not now.endswith(INCOMPLETE)):
            self.text += now[len(before) :]
            self.window, self.read = self.read, len(self.ids)
            self._find_stop()

    def take(self, final: bool = False) -> str:
        """The text not handed out yet; without `final`, what could still turn into a stop string (or a
        character whose bytes have not all come) stays back."""
        if final and not self.stopped:
            self._read(final=True)
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        piece = self.text[self.sent : max(end, self.sent)]
        self.sent += len(piece)
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _find_stop(self) -> None:
        found = [at for at in (self.text.find(stop, max(self.sent - len(stop), 0)) for stop in self.stops) if at >= 0]
        if found:
            self.text, self.stopped = self.text[: min(found)], True

    def _held_back(self) -> int:
        """Characters at the end of `text` that are the beginning of some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
