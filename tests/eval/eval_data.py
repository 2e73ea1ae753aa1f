"""Small benchmark fixtures in the real Hugging Face schemas (docs/CONTRACTS.md), shared by the
eval tests. Tests write them to tmp_path as JSONL, exactly what `--data` expects."""
from __future__ import annotations

import json
from pathlib import Path

GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                 "many clips in May. How many clips did Natalia sell altogether?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                 "babysitting. How much did she earn?",
     "answer": "12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "A robe takes 2 bolts of blue fiber and half that much white fiber. How many "
                 "bolts in total does it take?",
     "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n2+1=<<2+1=3>>3\n#### 3"},
    {"question": "A company spends $1,200 a month. How much in a year?",
     "answer": "1200*12=<<1200*12=14400>>14400\n#### 14,400"},
]

MATH500 = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "... $\\boxed{\\frac34}$",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 1,
     "unique_id": "test/prealgebra/1.json"},
    {"problem": "Simplify $\\sqrt{12}$.", "solution": "$\\boxed{2\\sqrt{3}}$",
     "answer": "2\\sqrt{3}", "subject": "Algebra", "level": 2,
     "unique_id": "test/algebra/2.json"},
    {"problem": "Solve $x^2 < 4$ for $x \\ge 0$.", "solution": "$\\boxed{[0,2)}$",
     "answer": "[0,2)", "subject": "Algebra", "level": 3, "unique_id": "test/algebra/3.json"},
    {"problem": "What is the measure of each angle of an equilateral triangle?",
     "solution": "$\\boxed{60^\\circ}$", "answer": "60^\\circ", "subject": "Geometry",
     "level": 1, "unique_id": "test/geometry/4.json"},
]

MBPP = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a "
                            "given character from the string.",
     "code": "def remove_Occ(s,ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n"
             "    return s if i < 0 else s[:i] + s[i+1:]",
     "test_list": ['assert remove_Occ("hello","l") == "heo"',
                   'assert remove_Occ("abcda","a") == "bcd"',
                   'assert remove_Occ("PHP","P") == "H"'],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to sort a given matrix in ascending order "
                            "according to the sum of its rows.",
     "code": "def sort_matrix(M):\n    return sorted(M, key=sum)",
     "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])=="
                   "[[1, 1, 1], [1, 2, 3], [2, 4, 5]]",
                   "assert sort_matrix([[5,8,9],[6,4,3],[2,1,4]])==[[2, 1, 4], [6, 4, 3], "
                   "[5, 8, 9]]"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 17, "text": "Write a function to find the perimeter of a square.",
     "code": "def square_perimeter(a):\n  return 4*a",
     "test_list": ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20",
                   "assert square_perimeter(4)==16"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 901, "text": "Write a function that returns the value of the global OFFSET "
                             "plus x.",
     "code": "def add_offset(x):\n    return OFFSET + x",
     "test_list": ["assert add_offset(1) == 11", "assert add_offset(-10) == 0"],
     "test_setup_code": "OFFSET = 10", "challenge_test_list": []},
]

IFEVAL = [
    {"key": 1000, "prompt": "Write a short poem about the sea. Do not use any commas.",
     "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 1001, "prompt": "Describe a cat in all lowercase letters, at least 3 sentences.",
     "instruction_id_list": ["change_case:english_lowercase",
                             "length_constraints:number_sentences"],
     "kwargs": [{"num_sentences": None, "relation": None},
                {"num_sentences": 3, "relation": "at least"}]},
    {"key": 1002, "prompt": "Answer with a title in double angular brackets and end with "
                            "'Is there anything else I can help with?'",
     "instruction_id_list": ["detectable_format:title", "startend:end_checker"],
     "kwargs": [{}, {"end_phrase": "Is there anything else I can help with?"}]},
]

HUB_SCHEMA = {"gsm8k": GSM8K, "math500": MATH500, "mbpp": MBPP, "ifeval": IFEVAL}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
