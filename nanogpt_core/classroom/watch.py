"""Refuse an answer that calls the package function its exercise asks the student to write.

A check declares the functions that answer its exercise (``@answered_by(muon.orthogonalize)``). While
the check runs, a profile hook watches every Python call: when one of those functions starts, the
hook walks the call stack up from it, past the frames of libraries (the package itself, torch, the
standard library), to the first frame of other code. If that frame belongs to the check, the call is
the check's own reference; otherwise the student's code made it, however the function was imported,
renamed, wrapped (``functools.partial``, a lambda, a decorator) or reached (``getattr``, ``importlib``,
a copy of its code object), and the check fails with a message that says so.

The hook keys a function by its code: where it was written (file, first line, name) and what it
does (its bytecode, names and constants), so a relocated copy of the code object is caught too.
An audit hook (``sys.addaudithook``, permanent once added, idle outside a check) refuses the two
ways around the watch during a check: replacing the profile hook, and starting a process (a fresh
interpreter sees no hook), unless the check itself does it (chapter 9's check forks its two ranks;
torch.compile's workers start under a check's frame).

What this does not catch: the function's source retyped into the answer (which is reading the
package, not calling it), and a C extension that calls Python code without a Python frame.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import os
import sys
import sysconfig
import threading

import torch

import nanogpt_core

_PACKAGE = os.path.dirname(os.path.abspath(nanogpt_core.__file__))
_CHECKS = os.path.join(_PACKAGE, "classroom", "checks")
_LIBRARIES = tuple(sorted({os.path.realpath(p) for p in (
    _PACKAGE, os.path.dirname(torch.__file__), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
    sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}))
_SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty",
                 "pty.spawn")


def _codes(target) -> list:
    """The code objects of ``target``: a function (unwrapped), a method, or every function of a class."""
    if inspect.isclass(target):
        return [c for v in vars(target).values() for c in _codes(v)]
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    if isinstance(target, functools.partial):
        return _codes(target.func)
    target = inspect.unwrap(target) if callable(target) else target
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    return [code] if code is not None else []


def _where(code) -> tuple:
    return (os.path.realpath(code.co_filename), code.co_firstlineno, code.co_name)


def _what(code) -> tuple:
    return (code.co_code, code.co_names, code.co_consts)


class _Watch:
    """The functions that answer one check's exercise, and what the watch saw while it ran."""

    def __init__(self, exercise: str, answers: tuple):
        self.exercise = exercise
        self.names, self.builtins = {}, {}
        for target in answers:
            if isinstance(target, str):  # "lab/bos_alignment.py:document_positions": a function of the package
                path, _, qualname = target.partition(":")  # named by its file, so the classroom need not import it
                self.names[(os.path.realpath(os.path.join(_PACKAGE, path)), qualname)] = f"nanogpt_core.{path[:-3].replace('/', '.')}.{qualname}"
                continue
            name = f"{getattr(target, '__module__', None) or 'torch'}.{getattr(target, '__qualname__', repr(target))}"
            if inspect.isbuiltin(target):  # a C function, such as torch's scaled_dot_product_attention
                self.builtins[id(target)] = name
            for code in _codes(target):
                self.names[_where(code)] = self.names[_what(code)] = name
        self.refusals: list[str] = []

    def is_answer(self, code) -> str | None:
        return (self.names.get(_where(code)) or self.names.get(_what(code))
                or self.names.get((os.path.realpath(code.co_filename), code.co_qualname)))

    def refuse(self, why: str) -> None:
        if why not in self.refusals:
            self.refusals.append(why)


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):  # "<frozen ...>" and torch.fx's generated "<eval_with_key>" are libraries
        return filename.startswith(("<frozen", "<eval_with_key"))
    path = os.path.realpath(filename)
    return path.startswith(_LIBRARIES) and not path.startswith(_CHECKS)


def _from_the_check(frame) -> bool:
    """Whether the first frame at or above ``frame`` that is not a library's belongs to a check (a thread
    the answer started has no such frame: it is not the check's)."""
    while frame is not None and _is_library(frame.f_code.co_filename):
        frame = frame.f_back
    return frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(_CHECKS)


_active: list[_Watch] = []  # the watch of the check that is running (checks do not nest)
_installing = [False]


def _profile(frame, event, arg):
    if not _active or event not in ("call", "c_call"):
        return
    watch = _active[-1]
    if event == "call":  # ``frame`` is the called function's: who called it?
        name, caller = watch.is_answer(frame.f_code), frame.f_back
    else:  # a C function: ``frame`` is its caller's
        name, caller = watch.builtins.get(id(arg)), frame
    if name and not _from_the_check(caller):
        watch.refuse(f"your function called {name}, the package's answer to this exercise; write it yourself "
                     "(the package's other functions are fine)")


def _audit(event: str, args) -> None:
    if not _active or _installing[0]:
        return
    if event in ("sys.setprofile", "sys.settrace"):
        if (event == "sys.setprofile" and sys._getframe(1).f_code.co_filename == threading.__file__
                and getattr(threading, "_profile_hook", None) is _profile):
            return  # a new thread installing the watch's own hook (threading.setprofile)
        watch = _active[-1]
        watch.refuse(f"your function called {event}, which would switch off the watch "
                     "that checks an answer does not call the package's own answer")
        raise RuntimeError(f"{event} is not allowed while an exercise is checked")
    if event in _SPAWN_EVENTS and not _from_the_check(sys._getframe(1)):
        _active[-1].refuse("your function started a process; an exercise's answer computes in its own process")
        raise RuntimeError(f"{event}: starting a process is not allowed while an exercise is checked")


_audit_added = [False]


def _set_profile(hook) -> None:
    _installing[0] = True
    try:
        sys.setprofile(hook)
        threading.setprofile(hook)
    finally:
        _installing[0] = False


@contextlib.contextmanager
def watching(watch: _Watch):
    """Run a check under ``watch`` (its refusals emptied); yields it, whose ``refusals`` the caller turns
    into a verdict."""
    if not _audit_added[0]:
        sys.addaudithook(_audit)
        _audit_added[0] = True
    watch.refusals = []
    previous = sys.getprofile()
    _active.append(watch)
    _set_profile(_profile)
    try:
        yield watch
    finally:
        _set_profile(previous)
        _active.pop()


def refusals() -> list[str]:
    """What the running check's watch has refused so far (in a forked rank: that rank's own)."""
    return list(_active[-1].refusals) if _active else []


def answered_by(*answers):
    """Decorate a check with the package functions (or classes) that answer its exercise: the check
    fails if the student's function calls any of them, however it reaches them. A function of the
    lab, which the classroom does not import, is named by its file: ``"lab/module.py:function"``."""
    def decorate(check):
        keys = _Watch(check.__name__, answers)  # the answers' code keys, computed once per check

        @functools.wraps(check)
        def run(student, *args, **kwargs):
            from .checks import CheckFailed

            direct = [n for n in (keys.is_answer(c) for c in _codes(student)) if n]
            if direct:
                raise CheckFailed(f"{check.__name__}: the submitted function is {direct[0]}, the package's answer to "
                                  "this exercise; write it yourself")
            printed = io.StringIO()  # the check's "✓" line is shown only if the watch refused nothing
            with watching(keys) as watch:
                try:
                    with contextlib.redirect_stdout(printed):
                        result = check(student, *args, **kwargs)
                except Exception:
                    if watch.refusals:
                        raise CheckFailed(f"{check.__name__}: {watch.refusals[0]}") from None
                    print(printed.getvalue(), end="")
                    raise
            if watch.refusals:
                raise CheckFailed(f"{check.__name__}: {watch.refusals[0]}")
            print(printed.getvalue(), end="")
            return result

        run.answers = answers
        return run
    return decorate
