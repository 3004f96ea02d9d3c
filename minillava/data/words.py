"""Small English helpers shared by the captioner and the rule teacher: plurals, numbers, articles, lists."""

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_IRREGULAR = {"person": "people", "mouse": "mice", "sheep": "sheep", "skis": "skis", "scissors": "scissors",
              "knife": "knives", "wine glass": "wine glasses"}


def plural(noun: str, n: int = 2) -> str:
    """``plural("cross") == "crosses"``; ``n == 1`` keeps the singular."""
    if n == 1:
        return noun
    return _IRREGULAR.get(noun, noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s"))


def number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def a(noun_phrase: str) -> str:
    """Indefinite article: ``a("orange star") == "an orange star"``."""
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def count_phrase(noun: str, n: int, one: str = "one") -> str:
    """``count_phrase("cross", 2) == "two crosses"``; with ``one="a"`` a single item reads "a cross"."""
    if n == 1 and one == "a":
        return a(noun)
    return f"{number(n)} {plural(noun, n)}"


def join_words(items: list[str]) -> str:
    """``["a", "b", "c"] -> "a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
