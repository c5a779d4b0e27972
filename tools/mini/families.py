"""The material families mini's training scenes are painted with; a scene painted with one
family is captioned with its word, so the word selects the family at painting time."""

FAMILIES = ("marble", "stripes", "checker", "cells", "bricks", "swirls", "plain")
