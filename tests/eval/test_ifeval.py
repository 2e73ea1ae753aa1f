"""IFEval: every one of the 25 instruction types with a following and a violating response,
the loose variants, the metrics, and the offline NLTK data."""
from __future__ import annotations

import json

import pytest

from fusionroute.eval import nltk_data
from fusionroute.eval.ifeval import aggregate, judge_ifeval, loose_variants, registry

EN_TEXT = ("The weather today is lovely and the park is full of families enjoying the sun. "
           "Children are playing on the swings while their parents talk nearby.")

# instruction id, kwargs, a response that follows it, a response that violates it
CASES = [
    ("keywords:existence", {"keywords": ["banana", "river"]},
     "A banana floated down the river.", "A banana floated down the stream."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat cat cat", "cat cat dog"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "one cat here", "cat and cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "ugly"]},
     "A nice and pretty day.", "A bad day."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "zig zag zoo", "zig zag"),
    ("language:response_language", {"language": "en"}, EN_TEXT,
     "Le temps est magnifique aujourd'hui et le parc est plein de familles qui profitent du "
     "soleil. Les enfants jouent sur les balançoires."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Just one sentence here.", "One. Two. Three."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith came. He sat. He left.", "Dr. Smith came. He left."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "First paragraph.\n***\nSecond paragraph.", "Only one paragraph."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Four words right here.", "This one has six words total."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "This one has six words total.", "Too short."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "The first part.\n\nHowever, the second part.", "The first part.\n\nBut the second part."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], welcome to [city].", "Dear [name], welcome."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello there.\n\nP.S. See you soon.", "Hello there. See you soon."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "* first\n* second", "* first\n* second\n* third"),
    ("detectable_format:constrained_response", {},
     "My answer is yes.", "Yes, definitely."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "This is *important* and *urgent*.", "This is *important* only."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nIntro.\nSection 2\nBody.", "Section 1\nEverything at once."),
    ("detectable_format:json_format", {},
     "```json\n{\"a\": 1}\n```", "a: 1"),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses are red.", "My Poem\nRoses are red."),
    ("combination:two_responses", {},
     "Answer one.\n******\nAnswer two.", "Answer one only."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku about rain."},
     "Write a haiku about rain. Soft rain falls at night.", "Soft rain falls at night."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Here is the info. Any other questions?", "Any other questions? Here is the info."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY important.", "This is VERY important."),
    ("change_case:english_capital", {},
     EN_TEXT.upper(), EN_TEXT),
    ("change_case:english_lowercase", {},
     EN_TEXT.lower(), EN_TEXT),
    ("punctuation:no_comma", {}, "No commas in this text.", "Well, there is one."),
    ("startend:quotation", {}, '"Wrapped in quotes."', "Not wrapped."),
]


def _record(instruction_id: str, kwargs: dict, prompt: str = "Do the task.") -> dict:
    return {"key": 1, "prompt": prompt, "instruction_id_list": [instruction_id],
            "kwargs": [kwargs]}


def test_all_25_instruction_types_are_registered_and_covered():
    assert len(registry()) == 25
    assert {c[0] for c in CASES} == set(registry())


@pytest.mark.parametrize("instruction_id,kwargs,follows,violates", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_checkers(instruction_id, kwargs, follows, violates):
    good = judge_ifeval(_record(instruction_id, kwargs), follows)
    bad = judge_ifeval(_record(instruction_id, kwargs), violates)
    assert good.strict == [True] and good.failed_strict == []
    assert bad.strict == [False] and bad.failed_strict == [instruction_id]


def test_hub_union_schema_none_kwargs_are_ignored():
    """In google/IFEval every kwargs dict has all keys, absent ones as None."""
    union = {"num_sentences": None, "relation": None, "keywords": None, "language": None,
             "num_words": 3, "end_phrase": None}
    union["relation"] = "at least"
    j = judge_ifeval(_record("length_constraints:number_words", union), "one two three four")
    assert j.strict == [True]


def test_loose_variants_match_the_reference_order():
    variants = loose_variants("Sure:\n**body**\nBye")
    assert variants == ["Sure:\n**body**\nBye", "Sure:\nbody\nBye", "**body**\nBye",
                        "Sure:\n**body**", "**body**", "body\nBye", "Sure:\nbody", "body"]


@pytest.mark.parametrize("instruction_id,kwargs,response", [
    # A chatty first line breaks lowercase in strict mode only.
    ("change_case:english_lowercase", {}, "Sure! Here it is:\n" + EN_TEXT.lower()),
    # Markdown bold around the end phrase.
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Info here. **Any other questions?**"),
    # A trailing sign-off line after the required quotation.
    ("startend:quotation", {}, '"All quoted."\n(Generated by a model)'),
    # A leading line before the title-less JSON.
    ("detectable_format:json_format", {}, "Here is the JSON:\n{\"a\": 1}"),
])
def test_loose_mode_forgives_formatting_that_strict_does_not(instruction_id, kwargs, response):
    j = judge_ifeval(_record(instruction_id, kwargs), response)
    assert j.strict == [False] and j.loose == [True]
    assert j.failed_strict == [instruction_id] and j.failed_loose == []


def test_empty_response_fails_every_instruction_but_keeps_the_denominator():
    record = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma",
                                                               "detectable_format:title"],
              "kwargs": [{}, {}]}
    j = judge_ifeval(record, "   ")
    assert j.strict == [False, False] and j.loose == [False, False]
    assert aggregate([j])["inst_level_strict_acc"] == 0.0


def test_metrics_prompt_and_instruction_level():
    record = {"key": 2, "prompt": "p",
              "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
              "kwargs": [{}, {}]}
    judgements = [judge_ifeval(record, EN_TEXT.lower()),              # both followed
                  judge_ifeval(record, "Hello, " + EN_TEXT.lower()),  # both violated
                  judge_ifeval(record, EN_TEXT)]                      # comma ok, case not
    metrics = aggregate(judgements)
    assert metrics["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert metrics["inst_level_strict_acc"] == pytest.approx(3 / 6)
    assert set(metrics) == {"prompt_level_strict_acc", "inst_level_strict_acc",
                            "prompt_level_loose_acc", "inst_level_loose_acc"}


def test_unknown_instruction_is_an_error():
    with pytest.raises(ValueError, match="unknown IFEval instruction"):
        judge_ifeval(_record("made:up", {}), "text")


def test_mismatched_kwargs_is_an_error():
    record = {"key": 3, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"],
              "kwargs": [{}, {}]}
    with pytest.raises(ValueError, match="kwargs"):
        judge_ifeval(record, "text")


def test_ensure_punkt_data_is_idempotent_and_loadable(tmp_path):
    root = nltk_data.ensure_punkt_data(tmp_path)
    english = root / "tokenizers" / "punkt_tab" / "english"
    files = sorted(p.name for p in english.iterdir())
    assert files == ["abbrev_types.txt", "collocations.tab", "ortho_context.tab",
                     "sent_starters.txt"]
    stamp = {p.name: p.stat().st_mtime_ns for p in english.iterdir()}
    assert nltk_data.ensure_punkt_data(tmp_path) == root
    assert {p.name: p.stat().st_mtime_ns for p in english.iterdir()} == stamp
    from nltk.tokenize.punkt import PunktTokenizer, load_punkt_params
    from nltk.data import FileSystemPathPointer

    params = load_punkt_params(FileSystemPathPointer(str(english)))
    assert "dr" in params.abbrev_types and len(params.ortho_context) > 1000
    tok = PunktTokenizer.__new__(PunktTokenizer)
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    PunktSentenceTokenizer.__init__(tok, params)
    assert tok.tokenize("Dr. Smith arrived at 5 p.m. today. He left.") == [
        "Dr. Smith arrived at 5 p.m. today.", "He left."]


def test_ensure_punkt_data_never_downloads(monkeypatch, tmp_path):
    import nltk

    def forbidden(*args, **kwargs):
        raise AssertionError("nltk.download must never be called")

    monkeypatch.setattr(nltk, "download", forbidden)
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "data"))
    root = nltk_data.ensure_punkt_data()
    assert root == tmp_path / "data"
    assert json.dumps(str(root))
