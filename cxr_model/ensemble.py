"""Ensembles: several trained classifiers combined into one model that averages their outputs.

The ensemble is an ordinary Keras model (raw pixels in, covid probability out), so the registry
stores it, the gate judges it and scoring runs it like any single model. Cross-validation uses it
to turn its fold models into one registrable model.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def average_ensemble(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose output is the mean of the ``members``' covid probabilities.

    The members must take the same input shape; each keeps its own weights (renamed
    ``member_<n>`` so their layer names cannot collide).
    """
    if not members:
        raise ValueError("an ensemble needs at least one member model")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different input shapes: {sorted(shapes)}")
    inputs = keras.Input(shape=shapes.pop(), name="xray")
    outputs = []
    for number, member in enumerate(members):
        member.name = f"member_{number}"
        outputs.append(member(inputs))
    average = (
        layers.Average(dtype="float32", name="covid_probability")(outputs)
        if len(outputs) > 1
        else outputs[0]
    )
    return keras.Model(inputs, average, name=name)
