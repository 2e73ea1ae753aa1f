"""Tiny-world instruction following: IFEval-style prompts with verifiable constraints.

A prompt asks for a short text about a topic (16 topics, 12 simple sentences each,
three of them containing commas) plus 1-2 (level 3: 2-3) verifiable constraints
using REAL IFEval instruction ids and kwargs names. Responses are composed from the
topic's sentence bank and then formatted (bullets, title, postscript, end phrase,
JSON, quotes, case). A response is accepted only if the module's checkers (which
mirror the IFEval checkers: regex word counts, Punkt-compatible sentence counts,
langdetect for the case constraints) all pass; rejected responses violate exactly
one constraint. Difficulty ``level``: 1 -> one constraint; 2 -> one or two;
3 -> two or three with larger counts.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

TOPICS: dict[str, list[str]] = {
    "cats": [
        "Cats sleep for most of the day.", "A cat likes a warm spot in the sun.",
        "Cats clean their fur with their tongues.", "Many cats chase small toys.",
        "A happy cat may purr softly.", "Cats can see well at night.",
        "Young cats are called kittens.", "Cats like to climb up high.",
        "Some cats drink milk from a bowl.", "Cats are quiet, soft and curious.",
        "When a cat is bored, it plays with string.", "Cats have sharp claws, long tails and whiskers.",
    ],
    "dogs": [
        "Dogs are loyal friends.", "A dog loves to run in the park.",
        "Dogs wag their tails when they are happy.", "Many dogs like to fetch a ball.",
        "Dogs have a strong sense of smell.", "A dog needs a walk every day.",
        "Young dogs are called puppies.", "Dogs bark at strangers.",
        "Some dogs help people at work.", "Dogs are playful, friendly and brave.",
        "After a long walk, a dog likes to rest.", "Dogs eat meat, rice and vegetables.",
    ],
    "rivers": [
        "Rivers flow from the hills to the sea.", "A river carries water over long distances.",
        "Fish swim in clean rivers.", "Many towns are built near rivers.",
        "Rivers can flood after heavy rain.", "Some rivers are very wide.",
        "Boats travel on big rivers.", "A small river is called a stream.",
        "Rivers give water to farms.", "Rivers are cold, fast and full of life.",
        "In spring, rivers grow larger.", "Birds, frogs and plants live near rivers.",
    ],
    "the moon": [
        "The moon shines at night.", "The moon moves around the earth.",
        "The moon has no air.", "People walked on the moon long ago.",
        "The moon looks different each week.", "The moon reflects light from the sun.",
        "There are many craters on the moon.", "The moon pulls on the ocean.",
        "A full moon is bright and round.", "The moon is gray, dusty and quiet.",
        "On a clear night, the moon is easy to see.", "The moon is small, cold and far away.",
    ],
    "bread": [
        "Bread is made from flour and water.", "Bakers bake bread in a hot oven.",
        "Fresh bread smells very good.", "Many people eat bread every day.",
        "Bread rises because of yeast.", "Some bread is dark and heavy.",
        "Toast is bread that is warmed until brown.", "Bread goes well with soup.",
        "A loaf of bread can feed a family.", "Bread can be soft, warm and sweet.",
        "In the morning, bread is a good breakfast.", "Bread, butter and jam make a simple meal.",
    ],
    "trees": [
        "Trees give us shade in summer.", "A tree grows from a small seed.",
        "Trees make the air clean.", "Birds build nests in trees.",
        "Some trees live for hundreds of years.", "Trees lose their leaves in autumn.",
        "The roots of a tree drink water.", "Wood comes from trees.",
        "A forest is full of trees.", "Trees are tall, green and strong.",
        "In winter, many trees look bare.", "Apples, pears and plums grow on trees.",
    ],
    "the sea": [
        "The sea covers most of the earth.", "The sea is full of salt water.",
        "Whales swim in the deep sea.", "Waves roll onto the beach.",
        "Ships sail across the sea.", "The sea looks blue on a sunny day.",
        "Many fish live in the sea.", "People swim in the sea in summer.",
        "The sea can be calm or rough.", "The sea is wide, deep and old.",
        "At night, the sea sounds loud.", "Crabs, shells and stones lie by the sea.",
    ],
    "rain": [
        "Rain falls from dark clouds.", "Plants need rain to grow.",
        "Rain makes the streets wet.", "People use umbrellas in the rain.",
        "Heavy rain can cause floods.", "After the rain, the air smells fresh.",
        "Children like to jump in puddles.", "Rain fills the lakes and rivers.",
        "Some places get rain every day.", "Rain can be light, cold or heavy.",
        "In spring, rain is common.", "Rain, wind and thunder make a storm.",
    ],
    "birds": [
        "Birds have feathers and wings.", "Most birds can fly.",
        "Birds sing in the morning.", "A bird lays eggs in a nest.",
        "Some birds fly south in winter.", "Birds eat seeds and insects.",
        "An owl hunts at night.", "Penguins are birds that cannot fly.",
        "Birds build nests from twigs.", "Birds are small, fast and bright.",
        "In the park, birds look for crumbs.", "Ducks, geese and swans swim on lakes.",
    ],
    "books": [
        "Books tell us many stories.", "A good book is hard to put down.",
        "People read books to learn new things.", "Libraries keep thousands of books.",
        "Some books have pictures.", "Children love books about animals.",
        "Reading a book before bed is relaxing.", "Books are made of paper.",
        "A writer works hard on a book.", "Books can be funny, sad or exciting.",
        "On a rainy day, a book is good company.", "Maps, poems and recipes fill some books.",
    ],
    "music": [
        "Music makes people happy.", "Many people sing in the car.",
        "A piano has black and white keys.", "Music can help us relax.",
        "Some songs are very old.", "People dance to fast music.",
        "A band plays music together.", "Children learn songs at school.",
        "Music fills the room with sound.", "Music can be loud, soft or sweet.",
        "At a party, music is always playing.", "Drums, flutes and guitars make music.",
    ],
    "gardens": [
        "A garden is full of plants.", "Flowers bloom in the garden in spring.",
        "Gardeners water the plants every day.", "Bees visit the flowers in a garden.",
        "Some people grow food in their garden.", "A garden needs sun and water.",
        "Weeds can take over a garden.", "A small garden can be very pretty.",
        "Children like to dig in the garden.", "Gardens are green, calm and bright.",
        "In summer, the garden is busy with insects.", "Roses, tulips and daisies grow in gardens.",
    ],
    "trains": [
        "Trains run on long metal tracks.", "A train can carry many people.",
        "Trains stop at busy stations.", "Some trains are very fast.",
        "Trains carry goods across the land.", "People read on the train.",
        "A train whistle is loud.", "Old trains used steam.",
        "Trains go through tunnels and over bridges.", "Trains are long, heavy and strong.",
        "At night, trains still keep running.", "Tickets, seats and bags fill a train.",
    ],
    "winter": [
        "Winter is the coldest season.", "Snow falls in winter.",
        "People wear warm coats in winter.", "The days are short in winter.",
        "Children build snowmen in winter.", "Lakes can freeze in winter.",
        "Hot soup is nice in winter.", "Some animals sleep all winter.",
        "Winter nights are long and dark.", "Winter is cold, white and quiet.",
        "In winter, we stay inside more.", "Hats, gloves and scarves keep us warm.",
    ],
    "the sun": [
        "The sun is a giant star.", "The sun gives us light and heat.",
        "Plants need the sun to grow.", "The sun rises in the east.",
        "The sun sets in the west.", "It is not safe to look at the sun.",
        "The sun is far from the earth.", "The sun makes the day bright.",
        "Sunlight takes minutes to reach us.", "The sun is hot, bright and huge.",
        "In summer, the sun stays up late.", "Light, heat and energy come from the sun.",
    ],
    "apples": [
        "Apples grow on trees.", "An apple can be red or green.",
        "Apples are sweet and crisp.", "Many people eat an apple every day.",
        "Apple pie is a popular dessert.", "Apples are picked in autumn.",
        "Apple juice is made from apples.", "An apple has small seeds inside.",
        "Some apples taste sour.", "Apples are healthy, cheap and tasty.",
        "In the fall, farms sell fresh apples.", "Apples, pears and plums are fruits.",
    ],
}

KEYWORDS = ["home", "friend", "morning", "color", "water", "light", "garden", "story", "family",
            "song", "road", "stone", "child", "night", "dream", "city", "window", "summer", "gift",
            "river", "paper", "smile", "world", "nature"]
KW_SENTENCES = ["This makes me think of the word {k}.", "I also like the word {k}.",
                "The word {k} comes to mind.", "It reminds me of {k}.", "Here is the word {k} again."]
END_PHRASES = ["Any other questions?", "Is there anything else I can help with?",
               "Let me know if you have additional questions.", "That is all I know.",
               "Have a nice day."]
PS_SENTENCES = ["I hope you enjoyed this.", "Thanks for reading.", "I wrote this for you.",
                "I like this topic a lot."]
TITLE_PATTERNS = ["All About {T}", "Notes on {T}", "A Short Note", "My Little Text", "{T}"]
TASK_PATTERNS = ["Write a short text about {t}.", "Tell me about {t}.", "Describe {t} in a few sentences.",
                 "Write a few lines about {t}.", "Write something about {t}."]

ID_LOWER = "change_case:english_lowercase"
ID_UPPER = "change_case:english_capital"
ID_EXIST = "keywords:existence"
ID_FORBID = "keywords:forbidden_words"
ID_FREQ = "keywords:frequency"
ID_BULLETS = "detectable_format:number_bullet_lists"
ID_SENT = "length_constraints:number_sentences"
ID_WORDS = "length_constraints:number_words"
ID_END = "startend:end_checker"
ID_QUOTE = "startend:quotation"
ID_JSON = "detectable_format:json_format"
ID_TITLE = "detectable_format:title"
ID_COMMA = "punctuation:no_comma"
ID_PS = "detectable_content:postscript"
INSTRUCTION_IDS = [ID_LOWER, ID_UPPER, ID_EXIST, ID_FORBID, ID_FREQ, ID_BULLETS, ID_SENT, ID_WORDS,
                   ID_END, ID_QUOTE, ID_JSON, ID_TITLE, ID_COMMA, ID_PS]

DESCRIPTIONS = {
    ID_LOWER: ["Your entire response should be in English, and in all lowercase letters. "
               "No capital letters are allowed.", "Use only lowercase letters in your response."],
    ID_UPPER: ["Your entire response should be in English, and in all capital letters.",
               "Write your whole answer in capital letters."],
    ID_EXIST: [("Include keywords {keywords} in the response.", "Include the keyword {keywords} in the response."),
               ("Make sure to use the words {keywords_and}.", "Make sure to use the word {keywords_and}.")],
    ID_FORBID: [("Do not include keywords {forbidden} in the response.",
                 "Do not include the keyword {forbidden} in the response."),
                ("Do not use the words {forbidden_or}.", "Do not use the word {forbidden_or}.")],
    ID_FREQ: ["In your response, the word {keyword} should appear {relation} {frequency} times."],
    ID_BULLETS: ["Your answer must contain exactly {num_bullets} bullet points. "
                 "Use the markdown bullet points such as:\n* This is point 1.",
                 "Answer with exactly {num_bullets} bullet points that start with *."],
    ID_SENT: ["Your response should contain {relation} {num_sentences} sentences.",
              "Answer in {relation} {num_sentences} sentences."],
    ID_WORDS: ["Answer with {relation} {num_words} words."],
    ID_END: ["Finish your response with this exact phrase {end_phrase} No other words should follow this phrase.",
             "End your answer with the exact phrase \"{end_phrase}\""],
    ID_QUOTE: ["Wrap your entire response with double quotation marks.",
               "Put your whole answer inside double quotes."],
    ID_JSON: ["Entire output should be wrapped in JSON format.", "Give your whole answer in JSON format."],
    ID_TITLE: ["Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
               "Add a title in double angular brackets, like <<my title>>."],
    ID_COMMA: ["In your entire response, refrain from the use of any commas.", "Do not use any commas."],
    ID_PS: ["At the end of your response, please explicitly add a postscript starting with {postscript_marker}"],
}

_CONFLICTS = {
    ID_LOWER: {ID_UPPER}, ID_UPPER: {ID_LOWER},
    ID_JSON: {ID_QUOTE, ID_TITLE, ID_BULLETS, ID_PS, ID_END, ID_SENT, ID_WORDS},
    ID_QUOTE: {ID_BULLETS, ID_JSON},
    ID_SENT: {ID_PS, ID_BULLETS, ID_JSON, ID_WORDS},
    ID_WORDS: {ID_SENT, ID_JSON},
    ID_BULLETS: {ID_JSON, ID_QUOTE, ID_SENT},
    ID_PS: {ID_JSON, ID_SENT},
    ID_END: {ID_JSON},
    ID_TITLE: {ID_JSON},
}
_WEIGHTS = {ID_LOWER: 1.0, ID_UPPER: 1.0, ID_EXIST: 1.0, ID_FORBID: 1.0, ID_FREQ: 0.8, ID_BULLETS: 1.2,
            ID_SENT: 1.0, ID_WORDS: 1.0, ID_END: 1.0, ID_QUOTE: 0.8, ID_JSON: 0.8, ID_TITLE: 0.8,
            ID_COMMA: 1.2, ID_PS: 0.8}


# ---------------------------------------------------------------------------
# Checkers (mirror the IFEval ones)
# ---------------------------------------------------------------------------
def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    """Sentence count for our simple texts (no abbreviations except P.S., excluded by conflicts)."""
    return len(re.findall(r"[.!?]+(?=[\s\"]|$)", text))


_LANG_FACTORY = None


def is_english(text: str) -> bool:
    """langdetect with a private, seeded factory (no global state); True if unavailable."""
    global _LANG_FACTORY
    try:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
        if _LANG_FACTORY is None:
            f = DetectorFactory()
            f.load_profile(PROFILES_DIRECTORY)
            f.seed = 0
            _LANG_FACTORY = f
        det = _LANG_FACTORY.create()
        det.append(text)
        probs = det.get_probabilities()
        return bool(probs) and probs[0].lang == "en" and probs[0].prob > 0.95
    except ImportError:  # pragma: no cover - langdetect is a declared dependency
        return True
    except Exception:
        return False


def check_instruction(iid: str, kw: dict, text: str) -> bool:
    if iid == ID_LOWER:
        return text.islower() and is_english(text)
    if iid == ID_UPPER:
        return text.isupper() and is_english(text)
    if iid == ID_EXIST:
        return all(re.search(k, text, flags=re.IGNORECASE) for k in kw["keywords"])
    if iid == ID_FORBID:
        return not any(re.search(r"\b" + w + r"\b", text, flags=re.IGNORECASE) for w in kw["forbidden_words"])
    if iid == ID_FREQ:
        n = len(re.findall(kw["keyword"], text, flags=re.IGNORECASE))
        return n < kw["frequency"] if kw["relation"] == "less than" else n >= kw["frequency"]
    if iid == ID_BULLETS:
        n = len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE))
        n += len(re.findall(r"^\s*-.*$", text, flags=re.MULTILINE))
        return n == kw["num_bullets"]
    if iid == ID_SENT:
        n = count_sentences(text)
        return n < kw["num_sentences"] if kw["relation"] == "less than" else n >= kw["num_sentences"]
    if iid == ID_WORDS:
        n = count_words(text)
        return n < kw["num_words"] if kw["relation"] == "less than" else n >= kw["num_words"]
    if iid == ID_END:
        return text.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())
    if iid == ID_QUOTE:
        t = text.strip()
        return len(t) > 1 and t[0] == '"' and t[-1] == '"'
    if iid == ID_JSON:
        try:
            json.loads(text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip())
            return True
        except ValueError:
            return False
    if iid == ID_TITLE:
        return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))
    if iid == ID_COMMA:
        return "," not in text
    if iid == ID_PS:
        t = text.lower()
        pat = r"\s*p\.\s?p\.\s?s.*$" if kw["postscript_marker"] == "P.P.S" else r"\s*p\.\s?s\..*$"
        return bool(re.findall(pat, t, flags=re.MULTILINE))
    raise KeyError(iid)


# ---------------------------------------------------------------------------
# Prompt / response construction
# ---------------------------------------------------------------------------
@dataclass
class InstructProblem:
    key: str
    topic: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]
    level: int
    plan: dict

    def check(self, text: str) -> list[bool]:
        return [check_instruction(i, k, text) for i, k in zip(self.instruction_id_list, self.kwargs)]


_STOP = {"with", "from", "some", "that", "when", "their", "they", "have", "many", "most", "very",
         "like", "also", "full", "long", "good", "after", "every", "there", "each", "over", "until",
         "because", "about", "more", "always", "still", "cannot", "them", "look", "looks", "make", "made"}
TOPIC_STEMS = {"cats": "cat", "dogs": "dog", "rivers": "river", "the moon": "moon", "bread": "bread",
               "trees": "tree", "the sea": "sea", "rain": "rain", "birds": "bird", "books": "book",
               "music": "music", "gardens": "garden", "trains": "train", "winter": "winter",
               "the sun": "sun", "apples": "apple"}


def _topic_vocab(topic: str) -> list[str]:
    """Content words of a topic bank usable as forbidden words (in 1..7 of its sentences)."""
    bank = TOPICS[topic]
    words = sorted({w.lower() for s in bank for w in re.findall(r"[A-Za-z]+", s) if len(w) >= 4})
    out = []
    for w in words:
        n = sum(1 for s in bank if re.search(r"\b" + w + r"\b", s, flags=re.IGNORECASE))
        if 1 <= n <= 7 and w not in _STOP:
            out.append(w)
    return out


_VOCAB = {t: _topic_vocab(t) for t in TOPICS}


def _sample_ids(rng: random.Random, level: int) -> list[str]:
    if level == 1:
        k = 1
    elif level == 2:
        k = rng.choice([1, 2])
    else:
        k = rng.choice([2, 2, 3])
    ids: list[str] = []
    while len(ids) < k:
        cands = [i for i in INSTRUCTION_IDS if i not in ids
                 and not any(i in _CONFLICTS.get(j, ()) or j in _CONFLICTS.get(i, ()) for j in ids)]
        if not cands:
            break
        ids.append(rng.choices(cands, weights=[_WEIGHTS[c] for c in cands], k=1)[0])
    return ids


def _sample_kwargs(rng: random.Random, iid: str, topic: str, level: int) -> dict:
    if iid == ID_EXIST:
        return {"keywords": sorted(rng.sample(KEYWORDS, rng.choice([1, 2] if level < 3 else [2])))}
    if iid == ID_FORBID:
        return {"forbidden_words": sorted(rng.sample(_VOCAB[topic], rng.choice([1, 2])))}
    if iid == ID_FREQ:
        if rng.random() < 0.7:
            return {"keyword": rng.choice(KEYWORDS), "frequency": rng.randint(2, 3 if level < 3 else 4),
                    "relation": "at least"}
        return {"keyword": TOPIC_STEMS[topic], "frequency": rng.randint(2, 3), "relation": "less than"}
    if iid == ID_BULLETS:
        return {"num_bullets": rng.randint(2, 3 if level == 1 else 4 if level == 2 else 5)}
    if iid == ID_SENT:
        if rng.random() < 0.5:
            return {"num_sentences": rng.randint(2, 4), "relation": "less than"}
        return {"num_sentences": rng.randint(3, 4 if level < 3 else 6), "relation": "at least"}
    if iid == ID_WORDS:
        if rng.random() < 0.5:
            return {"num_words": rng.choice([15, 20, 25, 30]), "relation": "less than"}
        return {"num_words": rng.choice([20, 25, 30] if level < 3 else [30, 40, 50]), "relation": "at least"}
    if iid == ID_END:
        return {"end_phrase": rng.choice(END_PHRASES)}
    if iid == ID_PS:
        return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    return {}


def _describe(rng: random.Random, iid: str, kw: dict) -> str:
    pat = rng.choice(DESCRIPTIONS[iid])
    fields = dict(kw)
    if iid == ID_EXIST:
        fields["keywords"] = ", ".join(kw["keywords"])
        fields["keywords_and"] = " and ".join(kw["keywords"])
    if iid == ID_FORBID:
        fields["forbidden"] = ", ".join(kw["forbidden_words"])
        fields["forbidden_or"] = " or ".join(kw["forbidden_words"])
    if isinstance(pat, tuple):  # (plural, singular)
        pat = pat[1] if len(kw.get("keywords", kw.get("forbidden_words", []))) == 1 else pat[0]
    return pat.format(**fields)


def sample_instruct(rng: random.Random, level: int) -> InstructProblem:
    """Sample prompt + constraint set (the response is built by :func:`build_response`)."""
    topic = rng.choice(sorted(TOPICS))
    ids = _sample_ids(rng, level)
    kwargs = [_sample_kwargs(rng, i, topic, level) for i in ids]
    # keywords that must appear must not be forbidden / budgeted
    parts = [rng.choice(TASK_PATTERNS).format(t=topic)] + [_describe(rng, i, k) for i, k in zip(ids, kwargs)]
    prompt = " ".join(parts)
    key = "ifeval|" + topic + "|" + "|".join(f"{i}:{json.dumps(k, sort_keys=True)}" for i, k in zip(ids, kwargs))
    return InstructProblem(key=key, topic=topic, prompt=prompt, instruction_id_list=ids, kwargs=kwargs,
                           level=level, plan={})


def _render(prob: InstructProblem, rng: random.Random, plan: dict, n_items: int) -> str | None:
    topic = prob.topic
    bank = list(TOPICS[topic])
    rng.shuffle(bank)
    ban = plan.get("ban_words", [])
    budget = plan.get("budget")  # (substring, max occurrences)

    def ok(s: str) -> bool:
        if plan.get("no_comma") and "," in s:
            return False
        if any(re.search(r"\b" + w + r"\b", s, flags=re.IGNORECASE) for w in ban):
            return False
        return True

    kw_sents = []
    tmpl = list(KW_SENTENCES)
    rng.shuffle(tmpl)
    for i, k in enumerate(plan.get("kw_sents", [])):
        kw_sents.append(tmpl[i % len(tmpl)].format(k=k))
    forced = []
    for w in plan.get("require_words", []):
        c = [s for s in bank if re.search(r"\b" + w + r"\b", s, flags=re.IGNORECASE)]
        if c:
            forced.append(c[0])
    if plan.get("require_comma"):
        c = [s for s in bank if "," in s and s not in forced]
        if c:
            forced.append(c[0])
    n_bank = n_items - len(kw_sents) - len(forced)
    if n_bank < 0:
        return None
    chosen: list[str] = []
    used = 0
    for s in bank:
        if len(chosen) >= n_bank:
            break
        if s in forced or not ok(s):
            continue
        if budget:
            c = len(re.findall(budget[0], s, flags=re.IGNORECASE))
            if used + c > budget[1]:
                continue
            used += c
        chosen.append(s)
    if len(chosen) < n_bank:
        return None
    items = chosen + forced
    rng.shuffle(items)
    for s in kw_sents:
        items.insert(rng.randint(0, len(items)), s)
    if plan.get("bullets"):
        body = "\n".join("* " + s for s in items)
    else:
        body = " ".join(items)
    multiline = bool(plan.get("bullets"))
    if plan.get("title"):
        T = topic.title() if not topic.startswith("the ") else topic[4:].title()
        body = "<<" + rng.choice(TITLE_PATTERNS).format(T=T) + ">>\n" + body
        multiline = True
    if plan.get("ps"):
        body += f"\n{plan['ps']} {rng.choice(PS_SENTENCES)}"
        multiline = True
    if plan.get("end"):
        body += ("\n" if multiline else " ") + plan["end"]
    if plan.get("json"):
        body = json.dumps({"answer": body})
    if plan.get("quote"):
        body = '"' + body + '"'
    if plan.get("case") == "lower":
        body = body.lower()
    elif plan.get("case") == "upper":
        body = body.upper()
    return body


# Constraints a plan meets with one switch: a flag the renderer honours, or a plan value copied from
# the instruction's kwargs. A violating plan clears the switch.
_PLAN_FLAGS = {ID_QUOTE: "quote", ID_JSON: "json", ID_TITLE: "title", ID_COMMA: "no_comma"}
_PLAN_VALUES = {ID_END: ("end", "end_phrase"), ID_PS: ("ps", "postscript_marker")}


def _plan(prob: InstructProblem) -> tuple[dict, tuple[int, int]]:
    """Compliant plan and the range of content items to try."""
    plan: dict = {"kw_sents": []}
    lo, hi = 2, 4 + (prob.level - 1)
    for iid, kw in zip(prob.instruction_id_list, prob.kwargs):
        if iid == ID_LOWER:
            plan["case"] = "lower"
            lo = max(lo, 3)
        elif iid == ID_UPPER:
            plan["case"] = "upper"
            lo = max(lo, 3)
        elif iid == ID_EXIST:
            plan["kw_sents"] += list(kw["keywords"])
        elif iid == ID_FORBID:
            plan.setdefault("ban_words", []).extend(kw["forbidden_words"])
        elif iid == ID_FREQ:
            if kw["relation"] == "at least":
                plan["kw_sents"] += [kw["keyword"]] * kw["frequency"]
            else:
                plan["budget"] = (kw["keyword"], kw["frequency"] - 1)
        elif iid == ID_BULLETS:
            plan["bullets"] = True
            lo = hi = kw["num_bullets"]
        elif iid == ID_SENT:
            n = kw["num_sentences"]
            if kw["relation"] == "less than":
                lo, hi = 1, n - 1
            else:
                lo, hi = n, n + 1
        elif iid == ID_WORDS:
            lo, hi = 1, 9
        elif iid in _PLAN_FLAGS:
            plan[_PLAN_FLAGS[iid]] = True
        elif iid in _PLAN_VALUES:
            key, kwarg = _PLAN_VALUES[iid]
            plan[key] = kw[kwarg]
    return plan, (min(lo, hi), hi)


def _violate(prob: InstructProblem, plan: dict, idx: int, rng: random.Random,
             span: tuple[int, int]) -> tuple[dict, tuple[int, int]]:
    """Mutate a compliant plan so that instruction ``idx`` is (likely) violated."""
    iid, kw = prob.instruction_id_list[idx], prob.kwargs[idx]
    plan = json.loads(json.dumps(plan))
    rng_lo, rng_hi = span
    if iid in (ID_LOWER, ID_UPPER):
        plan["case"] = None if rng.random() < 0.7 else ("upper" if iid == ID_LOWER else "lower")
    elif iid == ID_EXIST:
        for k in kw["keywords"]:
            if k in plan["kw_sents"]:
                plan["kw_sents"].remove(k)
                break
    elif iid == ID_FORBID:
        plan["ban_words"] = [w for w in plan.get("ban_words", []) if w not in kw["forbidden_words"]]
        plan["require_words"] = [rng.choice(kw["forbidden_words"])]
    elif iid == ID_FREQ:
        if kw["relation"] == "at least":
            for _ in range(rng.randint(1, kw["frequency"])):
                plan["kw_sents"].remove(kw["keyword"])
        else:
            plan.pop("budget", None)
            plan["require_words"] = [kw["keyword"]] * kw["frequency"]
    elif iid == ID_BULLETS:
        n = kw["num_bullets"]
        if rng.random() < 0.25:
            plan["bullets"] = False
        else:
            rng_lo = rng_hi = max(1, n + rng.choice([-1, 1]) if n > 1 else n + 1)
    elif iid in (ID_SENT, ID_WORDS):
        rng_lo, rng_hi = 1, 9  # the search below keeps a length that violates the bound
    elif iid in _PLAN_FLAGS:
        plan[_PLAN_FLAGS[iid]] = False
        if iid == ID_COMMA:
            plan["require_comma"] = True
    elif iid in _PLAN_VALUES:
        plan[_PLAN_VALUES[iid][0]] = None
    if plan.get("bullets") and iid != ID_BULLETS:
        n = prob.kwargs[prob.instruction_id_list.index(ID_BULLETS)]["num_bullets"]
        rng_lo = rng_hi = n
    return plan, (rng_lo, rng_hi)


def build_response(prob: InstructProblem, rng: random.Random, violate: int | None = None,
                   tries: int = 40) -> str | None:
    """A response passing every constraint (``violate=None``) or failing exactly constraint ``violate``."""
    plan, (lo, hi) = _plan(prob)
    if violate is not None:
        plan, (lo, hi) = _violate(prob, plan, violate, rng, (lo, hi))
    for _ in range(tries):
        text = _render(prob, rng, plan, rng.randint(lo, hi))
        if text is None:
            continue
        if len(text) > 480:
            continue
        res = prob.check(text)
        if violate is None and all(res):
            return text
        if violate is not None and not res[violate] and all(r for i, r in enumerate(res) if i != violate):
            return text
    return None


def to_ifeval_record(prob: InstructProblem, key: int) -> dict:
    return {"key": key, "prompt": prob.prompt, "instruction_id_list": list(prob.instruction_id_list),
            "kwargs": [dict(k) for k in prob.kwargs]}
