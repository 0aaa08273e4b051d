"""Synthetic surnames per language, standing in for the char-RNN
classification tutorial's data/names/[Language].txt files (which need a
download): each language draws its names from its own syllables and endings,
so the language can be learned from the spelling, but the names are made up.

    python -m gpunet.text.names data/names     # writes the 18 files there (says SYNTHETIC)
"""
from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["LANGUAGES", "synthetic_names", "write_names"]

# language -> (syllables, endings): flavour only, chosen so the languages differ in their letters
LANGUAGES = {
    "Arabic": ("al ha ma na sa ra ba ka zi fa", "i ah an ar id"),
    "Chinese": ("zh ch li wa ya xi qi ho tia ju", "ng n ao ei u"),
    "Czech": ("vo ck ha ze pr tr ko sl dv ro", "ek ova ak icka y"),
    "Dutch": ("va de ber ho ve ij ma kr oo ste", "en er ink sma dt"),
    "English": ("ha wor th ing son ley ash ford bro mil", "s ton ley er field"),
    "French": ("le bo du ch mar ro ge fo la be", "eau ier ette ault on"),
    "German": ("sch ba mu ne hof be kr ha ue wa", "er mann berg stein ler"),
    "Greek": ("pa ko ni ge ou ri sta th ma lo", "opoulos akis ou idis as"),
    "Irish": ("mc o do ga ke ny bri ca fl sh", "an ey agh ell y"),
    "Italian": ("ro ma ri ce lo bi ga vi to ne", "ini etti one ucci elli"),
    "Japanese": ("ka ta mi ya shi mo ha na su to", "moto yama da ki ko"),
    "Korean": ("ki pa cho ha ye yo jeo su mi li", "ng m k on"),
    "Polish": ("ko wa sz cz rz ow le ja ki ba", "ski wicz czyk ak ek"),
    "Portuguese": ("so ca pe al ri ma go fe ar va", "es eira inho ao o"),
    "Russian": ("iv pe ro zh ba ko vl mi so la", "ov ev in sky enko"),
    "Scottish": ("mac ca mp bell ke mu ro gr fr ste", "ie son ach ay wart"),
    "Spanish": ("ga ro me de lo ru fe ca ma ve", "ez ero ado ia os"),
    "Vietnamese": ("ng tr ph an du ho le vu bu ta", "uyen an inh oc ong"),
}


def synthetic_names(language: str, n: int = 150, seed: int = 0) -> list[str]:
    """`n` distinct made-up surnames of `language` (a key of LANGUAGES)."""
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {sorted(LANGUAGES)}, got {language!r}")
    syllables, endings = (s.split() for s in LANGUAGES[language])
    rng = np.random.default_rng([seed, sorted(LANGUAGES).index(language)])
    names: list[str] = []
    seen = set()
    while len(names) < n:
        body = "".join(rng.choice(syllables, rng.integers(1, 3)))
        name = (body + rng.choice(endings)).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def write_names(directory, n: int = 150, seed: int = 0) -> list[str]:
    """Write directory/<Language>.txt (one name a line) for every language; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for lang in LANGUAGES:
        path = os.path.join(directory, f"{lang}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(synthetic_names(lang, n, seed)) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join("data", "names")
    write_names(target)
    print(f"wrote SYNTHETIC names (not the real dataset) for {len(LANGUAGES)} languages to {target}")
