"""Needles generated from word lists: a fact sentence, the question that asks for it, the answer.

Owns the templates and word lists and `draw_needle(lang, rng)`. Every needle is a fresh combination
(city x activity, person x dish x ingredient, ...), drawn with a seeded `random.Random`, so a model
cannot have memorised it and the same seed always gives the same needle. The keyword (the drawn
answer word) is what NeedleBench's score looks for in the prediction.

It lives in data/ because both sides read it: the evaluation draws its needles from it
(megaindex.eval.needle) and the training-data generator holds every entry out of its documents
(megaindex.data.retrieval_docs); dependencies point from eval to data, never back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Needle:
    text: str            # the sentence hidden in the haystack
    question: str        # asks for the keyword
    answer_prefix: str   # the answer up to the keyword (the prompt ends with it)
    answer: str          # what follows the prefix: the keyword and the sentence end
    keyword: str


WORDS = {
    "en": {
        "city": ["Lisbon", "Nairobi", "Kyoto", "Reykjavik", "Cusco", "Tbilisi", "Hobart", "Valparaiso", "Tallinn",
                 "Marrakesh", "Hanoi", "Bergen", "Oaxaca", "Zanzibar", "Ljubljana", "Quebec", "Porto", "Yerevan",
                 "Bruges", "Havana", "Salzburg", "Cartagena", "Luang Prabang", "Dubrovnik"],
        "activity": ["rowing on the harbour at dawn", "eating grilled sardines", "climbing the old lighthouse",
                     "visiting the glass museum", "flying a red kite", "drinking mint tea on a rooftop",
                     "walking the city walls", "learning to play the drums", "riding a tram to the end of the line",
                     "watching the puppet theatre", "swimming in the hot springs", "painting the river at sunset",
                     "buying a wool hat at the market", "cycling along the canal", "feeding the pigeons in the square",
                     "reading in the botanical garden"],
        "person": ["Aunt Mirela", "Captain Osei", "Grandpa Tomas", "Chef Ingrid", "Doctor Halvorsen", "Madame Okafor",
                   "Uncle Rafferty", "Professor Lindqvist", "Nurse Abernathy", "Farmer Kowalczyk"],
        "dish": ["pumpkin soup", "lemon cake", "fish stew", "apple pie", "bean chili", "rice pudding", "onion tart"],
        "ingredient": ["smoked paprika", "a pinch of cinnamon", "toasted walnuts", "fresh ginger", "orange zest",
                       "dark molasses", "pickled plums", "roasted garlic", "a spoon of honey", "black cardamom"],
    },
    "zh": {
        "city": ["杭州", "大理", "西安", "拉萨", "厦门", "哈尔滨", "敦煌", "桂林", "苏州", "青岛", "成都", "丽江",
                 "洛阳", "泉州", "喀什", "景德镇", "凤凰古城", "乌镇"],
        "activity": ["在湖边骑自行车", "去夜市吃烤鱼", "爬上古塔看日出", "在茶馆听评书", "划船游览运河", "学做手工陶瓷",
                     "在寺庙里敲钟", "去山顶放风筝", "坐缆车看雪山", "在老街买剪纸", "泡温泉", "在书院里读诗"],
        "person": ["王奶奶", "李师傅", "张教授", "陈阿姨", "刘大厨", "赵医生", "孙老师", "周船长"],
        "dish": ["红烧肉", "酸菜鱼", "桂花糕", "牛肉面", "糖醋排骨", "八宝粥", "葱油饼"],
        "ingredient": ["陈皮", "桂皮", "冰糖", "花椒", "黄酒", "山楂", "红枣", "香菇", "芝麻油"],
    },
}


def _best_thing(lang: str, rng: random.Random) -> Needle:
    w = WORDS[lang]
    city, activity = rng.choice(w["city"]), rng.choice(w["activity"])
    if lang == "en":
        prefix = f"The best thing to do in {city} is"
        return Needle(f"{prefix} {activity}.", f"What is the best thing to do in {city}?", prefix, f" {activity}.",
                      activity)
    prefix = f"在{city}最值得做的事情是"
    return Needle(f"{prefix}{activity}。", f"在{city}最值得做的事情是什么？", prefix, f"{activity}。", activity)


def _secret_ingredient(lang: str, rng: random.Random) -> Needle:
    w = WORDS[lang]
    person, dish, ingredient = rng.choice(w["person"]), rng.choice(w["dish"]), rng.choice(w["ingredient"])
    if lang == "en":
        prefix = f"The secret ingredient in {person}'s {dish} is"
        return Needle(f"{prefix} {ingredient}.", f"What is the secret ingredient in {person}'s {dish}?", prefix,
                      f" {ingredient}.", ingredient)
    prefix = f"{person}做的{dish}的秘密配料是"
    return Needle(f"{prefix}{ingredient}。", f"{person}做的{dish}的秘密配料是什么？", prefix, f"{ingredient}。", ingredient)


TEMPLATES = (_best_thing, _secret_ingredient)
LANGS = tuple(WORDS)


def draw_needle(lang: str, rng: random.Random) -> Needle:
    """One needle in `lang` ("en" or "zh"): a template and its words drawn from `rng`."""
    return rng.choice(TEMPLATES)(lang, rng)
