"""Captions and tags for the synthetic images, in English, French, Spanish and German.

Every language has several templates; some name the background, most do not. The first template of each
language is the canonical short query ("a red circle", "un cercle rouge", ...) used by the quality checks.
"""

from __future__ import annotations

import random

LANGUAGES = ("en", "fr", "es", "de")

# colour -> language -> (masculine form, feminine or neuter form)
_COLOUR_WORDS: dict[str, dict[str, tuple[str, str]]] = {
    "red": {"en": ("red", "red"), "fr": ("rouge", "rouge"), "es": ("rojo", "roja"), "de": ("rot", "rot")},
    "green": {
        "en": ("green", "green"),
        "fr": ("vert", "verte"),
        "es": ("verde", "verde"),
        "de": ("grün", "grün"),
    },
    "blue": {"en": ("blue", "blue"), "fr": ("bleu", "bleue"), "es": ("azul", "azul"), "de": ("blau", "blau")},
    "yellow": {
        "en": ("yellow", "yellow"),
        "fr": ("jaune", "jaune"),
        "es": ("amarillo", "amarilla"),
        "de": ("gelb", "gelb"),
    },
    "purple": {
        "en": ("purple", "purple"),
        "fr": ("violet", "violette"),
        "es": ("morado", "morada"),
        "de": ("lila", "lila"),
    },
    "orange": {
        "en": ("orange", "orange"),
        "fr": ("orange", "orange"),
        "es": ("naranja", "naranja"),
        "de": ("orange", "orange"),
    },
    "black": {
        "en": ("black", "black"),
        "fr": ("noir", "noire"),
        "es": ("negro", "negra"),
        "de": ("schwarz", "schwarz"),
    },
    "white": {
        "en": ("white", "white"),
        "fr": ("blanc", "blanche"),
        "es": ("blanco", "blanca"),
        "de": ("weiß", "weiß"),
    },
}

# shape -> language -> (noun, grammatical gender: m, f or n)
_SHAPE_WORDS: dict[str, dict[str, tuple[str, str]]] = {
    "circle": {"en": ("circle", "n"), "fr": ("cercle", "m"), "es": ("círculo", "m"), "de": ("Kreis", "m")},
    "square": {"en": ("square", "n"), "fr": ("carré", "m"), "es": ("cuadrado", "m"), "de": ("Quadrat", "n")},
    "triangle": {
        "en": ("triangle", "n"),
        "fr": ("triangle", "m"),
        "es": ("triángulo", "m"),
        "de": ("Dreieck", "n"),
    },
    "star": {"en": ("star", "n"), "fr": ("étoile", "f"), "es": ("estrella", "f"), "de": ("Stern", "m")},
    "cross": {"en": ("cross", "n"), "fr": ("croix", "f"), "es": ("cruz", "f"), "de": ("Kreuz", "n")},
    "heart": {"en": ("heart", "n"), "fr": ("cœur", "m"), "es": ("corazón", "m"), "de": ("Herz", "n")},
}

# background -> language -> phrase used after "on" / "sur" / "sobre" / "auf"
_BACKGROUND_WORDS: dict[str, dict[str, str]] = {
    "gray": {"en": "a gray background", "fr": "fond gris", "es": "fondo gris", "de": "grauem Hintergrund"},
    "beige": {
        "en": "a beige background",
        "fr": "fond beige",
        "es": "fondo beige",
        "de": "beigem Hintergrund",
    },
    "sky": {
        "en": "a light blue background",
        "fr": "fond bleu clair",
        "es": "fondo azul claro",
        "de": "hellblauem Hintergrund",
    },
    "brown": {
        "en": "a brown background",
        "fr": "fond marron",
        "es": "fondo marrón",
        "de": "braunem Hintergrund",
    },
    "teal": {
        "en": "a teal background",
        "fr": "fond bleu canard",
        "es": "fondo verde azulado",
        "de": "türkisem Hintergrund",
    },
}


def _parts(colour: str, shape: str, lang: str) -> tuple[str, str, str]:
    """(noun, agreeing adjective, German article) for one colour and shape in one language."""
    noun, gender = _SHAPE_WORDS[shape][lang]
    masc, fem = _COLOUR_WORDS[colour][lang]
    if lang == "de":
        # Strong-ish adjective endings after "ein": -er (masculine), -es (neuter); lila/orange do not decline.
        ending = "er" if gender == "m" else "es"
        adj = masc if masc in ("lila", "orange") else masc + ending
        return noun, adj, "ein"
    adj = fem if gender == "f" else masc
    article = {"fr": "une" if gender == "f" else "un", "es": "una" if gender == "f" else "un"}.get(lang, "a")
    return noun, adj, article


def _templates(colour: str, shape: str, lang: str, background: str) -> list[str]:
    noun, adj, art = _parts(colour, shape, lang)
    bg = _BACKGROUND_WORDS[background][lang]
    plain = _COLOUR_WORDS[colour][lang][0]
    if lang == "en":
        a = "an" if adj[0] in "aeiou" else "a"
        return [
            f"{a} {adj} {noun}",
            f"a photo of {a} {adj} {noun}",
            f"{a} {adj} {noun} on {bg}",
            f"an image showing {a} {adj} {noun}",
            f"{adj} {noun}",
            f"a picture of a {noun} in {plain}",
        ]
    if lang == "fr":
        return [
            f"{art} {noun} {adj}",
            f"une photo d'{'une' if art == 'une' else 'un'} {noun} {adj}",
            f"{art} {noun} {adj} sur {bg}",
            f"une image montrant {art} {noun} {adj}",
            f"{noun} {adj}",
        ]
    if lang == "es":
        return [
            f"{art} {noun} {adj}",
            f"una foto de {art} {noun} {adj}",
            f"{art} {noun} {adj} sobre {bg}",
            f"una imagen que muestra {art} {noun} {adj}",
            f"{noun} {adj}",
        ]
    return [
        f"{art} {adj} {noun}",
        f"ein Foto: {art} {adj} {noun}",
        f"{art} {adj} {noun} auf {bg}",
        f"ein Bild mit einem {noun} in {plain.capitalize()}",
        f"{adj} {noun}",
    ]


def query(colour: str, shape: str, lang: str = "en") -> str:
    """The canonical short query for a colour and shape, e.g. "a red circle" or "ein roter Kreis"."""
    return _templates(colour, shape, lang, "gray")[0]


def captions(colour: str, shape: str, background: str, rng: random.Random) -> dict[str, str]:
    """One caption per language, each drawn from that language's templates."""
    return {lang: rng.choice(_templates(colour, shape, lang, background)) for lang in LANGUAGES}


def all_captions(colour: str, shape: str, background: str) -> dict[str, list[str]]:
    """Every template of every language, for training."""
    return {lang: _templates(colour, shape, lang, background) for lang in LANGUAGES}


def tags(colour: str, shape: str, background: str) -> list[str]:
    """Colour and shape words in every language, then the background (deduplicated, in order)."""
    words: list[str] = []
    for lang in LANGUAGES:
        noun, _, _ = _parts(colour, shape, lang)
        words += [_COLOUR_WORDS[colour][lang][0], noun.lower()]
    words.append(f"{background} background")
    return list(dict.fromkeys(words))
