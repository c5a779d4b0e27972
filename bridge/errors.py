"""The worker's job errors, in a module of their own so the server, the annotators and the
diffusion backend each import them from here instead of from one another."""
from __future__ import annotations


class JobError(Exception):
    """A job that cannot be done, with a message for the user and a code for programs."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    """The client cancelled the job (checked between steps, and inside a step between blocks)."""
