"""elastix's command-line flags, matched exactly as elastix's ``main`` matches them (:class:`ExactParser`).

Every ``elastix-bridge`` command that takes elastix's flags (the registration, ``plan``, ``batch``)
parses them here; a flag error is one :class:`CommandLineError` naming the flag and the fix.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Optional, Sequence

__all__ = ["CommandLineError", "ELASTIX_FLAGS_NOT_RUN", "ExactParser", "FLAG_RULE", "MULTI_IMAGE_FLAG"]


class CommandLineError(ValueError):
    """A flag the command cannot take as given: unknown, misspelt, repeated, without its value, or one
    of elastix's that elastix-bridge does not run. The message names it, and the fix."""


#: elastix flags that elastix-bridge does not run, refused by name (elastix's --help text in
#: Core/Main/elastix.cxx; Core/Kernel/elxMainBase.cxx SetProcessPriority).
ELASTIX_FLAGS_NOT_RUN = {
    "-priority": "sets the Windows process priority class (elastix ignores it on other systems); elastix-bridge "
                 "does not change priorities: leave it out, or start the command with `nice`",
    "-fp": "is elastix's fixed point set (for the CorrespondingPointsEuclideanDistanceMetric), which "
           "elastix-bridge does not run: leave it out, or run that registration with elastix",
    "-mp": "is elastix's moving point set (for the CorrespondingPointsEuclideanDistanceMetric), which "
           "elastix-bridge does not run: leave it out, or run that registration with elastix",
}
#: elastix's multi-image flags -f0 -f1 … -m0 … -fMask0 … (elxElastixBase.cxx, GenerateFileNameContainer).
MULTI_IMAGE_FLAG = re.compile(r"-(f|m|fMask|mMask)\d+")
FLAG_RULE = "flags are matched exactly, as elastix does: case-sensitive, whole, the value after a space"


class ExactParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that matches flags exactly, as elastix's ``main`` does (``key == "-p"``).

    argparse alone reads ``-fmask m.mha`` as ``-f mask`` and ``-fMaskm.mha`` as ``-f Maskm.mha``
    (single-dash concatenation), abbreviates long flags and reports ``-foo 3`` as ``unrecognized
    arguments: 3``. This parser first scans ``argv`` itself: every token is a flag of the parser
    (whole, case-sensitive), the value after a flag that takes one, or a positional argument; the
    scanned flags are then handed to argparse as ``flag=value`` so that values starting with ``-``
    stay values. Errors raise :class:`CommandLineError` (one line, through the command) instead of
    printing the usage and exiting 2.

    Beyond elastix, a flag given twice is an error unless it repeats by design (``-p``,
    ``action="append"``): elastix warns and keeps the first.

    Args (besides argparse's):
        refused: flags this command does not run -> why, and what to do (default: elastix's flags
            the bridge does not run, :data:`ELASTIX_FLAGS_NOT_RUN`, and -f0 -f1 …).
        commands: subcommand names, suggested for a misspelt first argument.
    """

    def __init__(self, *args, refused: Optional[dict] = None, commands: Sequence[str] = (), **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.refused = dict(ELASTIX_FLAGS_NOT_RUN if refused is None else refused)
        self.commands = list(commands)

    def error(self, message: str):
        raise CommandLineError(f"{message}; `{self.prog} -h` lists the flags")

    def parse_args(self, args=None, namespace=None):
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_args(self._exact_tokens(argv), namespace)

    def _option(self, token: str) -> Optional[argparse.Action]:
        return self._option_string_actions.get(token)

    def _exact_tokens(self, argv: list) -> list:
        """``argv`` checked flag by flag; returns it as ``flag=value`` tokens, then ``--`` and the positionals."""
        flags, positionals, seen = [], [], {}
        free = [a for a in self._actions if not a.option_strings and a.nargs != 0]
        i = 0
        while i < len(argv):
            token = argv[i]
            name, equals, attached = token.partition("=")
            action = self._option(token)
            if action is None and equals and name.startswith("--") and self._option(name) is not None:
                action, token = self._option(name), name  # --engine=bridge: argparse's own long form
                value = attached
                if action.nargs == 0:
                    raise CommandLineError(f"{name} takes no value (it was given {token}={attached})")
            elif action is not None and action.nargs != 0:
                value = self._value_of(argv, i)
                i += 1
            else:
                value = None
            if action is None:
                if token.startswith("-") and token != "-" and not _is_number(token):
                    raise CommandLineError(self._unknown_flag(token))
                if len(positionals) >= len(free):
                    raise CommandLineError(self._unexpected(argv, i))
                positionals.append(token)
                i += 1
                continue
            self._count(action, token, value, seen)
            flags.append(token if value is None else f"{token}={value}")
            i += 1
        return flags + ["--"] + positionals if positionals else flags

    def _value_of(self, argv: list, i: int) -> str:
        flag = argv[i]
        if i + 1 == len(argv):
            raise CommandLineError(f"{flag} is missing its value (it ends the command line); write {flag} "
                                   f"{self._metavar(flag)}")
        value = argv[i + 1]
        if self._option(value) is not None:
            raise CommandLineError(f"{flag} is missing its value (the next argument, {value}, is a flag); write "
                                   f"{flag} {self._metavar(flag)}")
        return value

    def _metavar(self, flag: str) -> str:
        action = self._option(flag)
        return action.metavar or action.dest.upper()

    def _count(self, action: argparse.Action, token: str, value, seen: dict) -> None:
        """A flag given twice is an error, unless it repeats by design (``-p``)."""
        if action.dest in seen and not isinstance(action, argparse._AppendAction):  # argparse's "append"
            first, first_value = seen[action.dest]
            what = (f"{first} and {token} are both given" if first != token
                    else f"{token} is given twice" if value is None
                    else f"{token} is given twice ({first_value} and {value})")
            raise CommandLineError(f"{what}; give {'one of them' if first != token else 'it once'} (elastix "
                                   "would keep the first without a word)")
        seen[action.dest] = (token, value)

    def _unknown_flag(self, token: str) -> str:
        """What is wrong with a token that looks like a flag but is none of this command's."""
        if token in self.refused:
            return f"{token} {self.refused[token]}"
        if MULTI_IMAGE_FLAG.fullmatch(token):
            return (f"{token} is elastix's multi-image registration (-f0 -f1 … -m0 -m1 …, a metric per image "
                    "pair), which elastix-bridge does not run: give one fixed image with -f and one moving image "
                    "with -m")
        options = [o for o in self._option_string_actions if o not in ("-h", "-help", "--help")]
        name, equals, value = token.partition("=")
        if equals and (name in options or name.lstrip("-") in {o.lstrip("-") for o in options}):
            flag = next(o for o in options if o.lstrip("-") == name.lstrip("-"))
            why = "elastix reads a value from the next argument" if flag.count("-") == 1 else f"the flag is {flag}"
            return f"{token}: write {flag} {value or self._metavar(flag)}, with a space ({why})"
        guess = _closest_flag(token, options)
        hint = f"; did you mean {guess}?" if guess else "."
        return f"unknown flag {token}{hint} The {FLAG_RULE} (`{self.prog} -h` lists them)"

    def _unexpected(self, argv: list, i: int) -> str:
        token, before = argv[i], argv[i - 1] if i else None
        action = self._option(before) if before is not None else None
        if action is not None and action.nargs == 0:
            return f"unexpected argument {token!r}: {before} takes no value"
        if i == 0 and self.commands:
            guess = difflib.get_close_matches(token, self.commands, n=1)
            if guess:
                return f"{token!r} is not a command or a flag; did you mean `{self.prog} {guess[0]}`?"
        if i >= 2 and self._option(argv[i - 2]) is not None:
            return (f"unexpected argument {token!r} after {argv[i - 2]} {before}: a flag takes one value (repeat "
                    f"the flag for another, where it may repeat, e.g. -p)")
        return f"unexpected argument {token!r}: every value follows its flag (`{self.prog} -h` lists them)"


def _is_number(token: str) -> bool:
    """``-1``, ``-2.5``: a (negative) number, a value rather than a flag."""
    return re.fullmatch(r"-\d+(\.\d*)?", token) is not None


def _closest_flag(token: str, options: Sequence[str]) -> Optional[str]:
    """The flag ``token`` most likely meant: the same letters in another case or with another number of
    dashes (``-fmask``, ``--out``), a flag with its value written onto it (``-fMaskm.mha``,
    ``-threads4``), else the closest spelling (difflib); None when nothing is close."""
    bare = token.lstrip("-").lower()
    for option in options:
        if option.lstrip("-").lower() == bare:
            return option
    close = difflib.get_close_matches(token, options, n=1, cutoff=0.75)  # -fMas, --prog, -threads4
    if close:
        return close[0]
    prefixes = [o for o in options if bare.startswith(o.lstrip("-").lower())]  # -fmask_fixed.mha, -fxf.mha
    if prefixes:
        return max(prefixes, key=len)
    close = difflib.get_close_matches(token, options, n=1, cutoff=0.6)
    return close[0] if close else None
