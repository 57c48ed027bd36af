"""Which service a dialled code reaches, and what a shortcut dial typed ahead.

`*383#` opens the lending menus; `*383*1#` opens them with "1" already entered (the
way villagers learn shortcuts). SMPP gateways put the whole dial string in the first
deliver_sm; HTTP aggregators send the base code and put the rest in `text`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    service: str
    code: str                 # the configured base code, e.g. *383#
    typed_ahead: tuple[str, ...]


class Router:
    def __init__(self, routes: dict[str, str]) -> None:
        # "*383#" -> "lending"
        self._routes = {self._clean(code): service for code, service in routes.items()}

    @staticmethod
    def _clean(code: str) -> str:
        return "".join(code.split())

    def route(self, dialled: str) -> Route | None:
        code = self._clean(dialled or "")
        if not code.endswith("#"):
            code += "#"
        if not code.startswith("*"):
            code = "*" + code
        service = self._routes.get(code)
        if service is not None:
            return Route(service, code, ())
        for base, service in self._routes.items():
            stem = base[:-1] + "*"
            if code.startswith(stem):
                rest = code[len(stem):-1]
                return Route(service, base, tuple(p for p in rest.split("*")))
        return None
