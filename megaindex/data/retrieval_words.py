"""Word lists and templates of the synthetic retrieval documents (megaindex.data.retrieval_docs).

Owns the vocabulary: owners, attributes and their values (numbers, single words, multi-word
phrases built from parts), statement and question/answer templates, and the short generic
sentences of repetitive haystacks, in English and Chinese. None of it may overlap the evaluation:
no needle word or template of megaindex.data.needle_words, no passkey sentence (tests check both).
"""

from __future__ import annotations

import random

EN_FIRST = ["Marisol", "Tobias", "Ingeborg", "Kwame", "Anouk", "Ravi", "Elif", "Mateo", "Saoirse", "Dmitri", "Yuki",
            "Leontine", "Oskar", "Priya", "Bastien", "Amara", "Henrik", "Lucia", "Emeka", "Noor", "Fenna", "Caspian",
            "Zofia", "Idris", "Margit", "Teodor", "Ayasha", "Rosalind", "Vikram", "Ottilie"]
EN_LAST = ["Achebe", "Lindgren", "Moreau", "Castellanos", "Okonkwo", "Varga", "Nakamura", "Petrov", "Quinlan",
           "Sørensen", "Albescu", "Fairweather", "Mbeki", "Delacroix", "Haddad", "Kowal", "Brennan", "Estrada", "Voss",
           "Thackeray"]
EN_GROUPS = ["the Harbor Office", "the north warehouse", "the river clinic", "the night shift", "the chess club",
             "the seed bank", "the weather station", "the old observatory", "the print shop", "the choir",
             "the ferry company", "the mountain hut", "the town archive", "the pottery workshop", "the rowing team"]
EN_NUMBER_ATTRS = ["locker number", "archive code", "room number", "ticket number", "account number", "badge number",
                   "serial number", "order number", "door code", "tracking number", "permit number", "license number",
                   "file number", "safe combination", "membership number", "seat number"]
EN_WORD_ATTRS = {
    "favourite colour": ["crimson", "teal", "amber", "violet", "ochre", "indigo", "scarlet", "olive", "turquoise",
                         "magenta", "silver", "maroon"],
    "favourite fruit": ["apricot", "mango", "quince", "lychee", "gooseberry", "papaya", "persimmon", "fig", "kiwi",
                        "pomegranate", "tangerine", "guava"],
    "lucky animal": ["otter", "heron", "lynx", "badger", "falcon", "tortoise", "gecko", "walrus", "ibis", "marmot",
                     "jackal", "puffin"],
    "chosen instrument": ["cello", "oboe", "banjo", "harp", "tuba", "marimba", "bassoon", "zither", "sitar",
                          "accordion", "clarinet", "ukulele"],
    "secret word": ["lantern", "meadow", "granite", "whistle", "anchor", "thimble", "compass", "saffron", "juniper",
                    "quartz", "pebble", "orchard"],
    "home planet in the story": ["Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Neptune", "Uranus", "Pluto"],
}
_ORD = ["first", "second", "third", "fourth", "fifth", "top", "bottom", "left", "middle"]
_WOOD = ["oak", "pine", "walnut", "birch", "cedar", "maple", "teak", "cherry"]
_FURN = ["desk", "dresser", "wardrobe", "cabinet", "bookcase", "sideboard", "chest", "workbench"]
_BOX = ["drawer", "shelf", "compartment", "box"]
_CHORE = ["taking the dog out", "ironing a shirt", "sweeping the porch", "winding the clock", "watering the ferns",
          "polishing old boots", "stretching by the window", "writing a short letter", "grinding coffee beans",
          "doing twenty push-ups", "checking the post", "tidying the workshop", "brushing the cat", "mending socks"]
_MEAL = ["breakfast", "work", "the first meeting", "the bus comes", "the others wake", "sunrise"]
_PROJECT = ["fixing the fence", "sorting old photographs", "repainting the shed", "building a bird box",
            "clearing out the attic", "planting tulip bulbs", "baking rye bread", "repairing a bicycle wheel",
            "assembling a bookshelf", "scanning family letters", "tuning the piano", "washing the car"]
_WITH = ["my brother", "a neighbour", "the twins", "an old friend", "two cousins", "the whole family", "a colleague"]
_COLOUR = ["green", "grey", "brown", "black", "white", "orange", "purple", "navy"]
_ITEM = ["umbrella", "suitcase", "notebook", "teapot", "wristwatch", "backpack", "scarf", "lamp", "jacket", "thermos"]
_DETAIL = ["a bent handle", "a torn strap", "a brass buckle", "a chipped lid", "a missing button", "a cracked face",
           "a long zip", "a wooden knob", "a faded label", "a loose hinge"]
_PLACE = ["bakery", "fire station", "library", "post office", "stone church", "school gate", "laundry", "pharmacy"]
_STREET = ["the railway line", "the stone bridge", "the long hedge", "the tram depot", "the cemetery wall",
           "the quiet lane", "the parking lot"]


# v4 open-vocabulary values (a span of the filler, megaindex.data.retrieval_subjects.open_value) and v5 random
# ones (random_value) belong to attributes that any words can fill.
EN_OPEN_ATTRS = ["code phrase", "motto", "watchword", "reminder", "caption", "favourite saying", "working title",
                 "slogan", "note on the door", "label on the folder", "chosen line", "reply"]
ZH_OPEN_ATTRS = ["口令", "座右铭", "暗语", "提醒", "标题", "备注", "口头禅", "留言", "标签上的字", "回信"]

# v8 random-owner subjects (megaindex.data.retrieval_subjects.random_subject): a generic thing that sits between the
# attribute and the owner's words, so that a key is sometimes two slots deep ("the motto of the notebook of {words}",
# "the reply in {Words}'s ledger", "{words}的笔记本的口令"); plain nouns of records, places and objects.
EN_THINGS = ["notebook", "ledger", "workshop", "garden", "archive", "report", "manual", "cabinet", "studio",
             "warehouse", "journal", "folder", "catalogue", "logbook", "register", "office", "library", "project",
             "committee", "expedition", "orchestra", "laboratory", "newsletter", "diary", "toolbox", "greenhouse",
             "bakery", "theatre", "courtyard", "attic", "barn", "caravan", "council", "almanac", "atlas", "memo",
             "passport", "drawer", "mailbox", "radio show", "lecture", "survey", "inventory", "crew", "album",
             "yearbook", "handbook", "mill", "station", "ship"]
ZH_THINGS = ["笔记本", "账本", "工作室", "花园", "档案", "报告", "手册", "柜子", "画室", "仓库", "日志", "文件夹",
             "目录", "航海日志", "登记簿", "办公室", "图书室", "项目", "委员会", "探险队", "乐团", "实验室", "简报",
             "日记", "工具箱", "温室", "剧团", "院子", "阁楼", "谷仓", "车队", "议会", "年鉴", "地图册", "护照",
             "信箱", "电台节目", "讲座", "调查", "清单", "相册", "纪念册", "磨坊", "车站", "船"]

# Phrase values: attribute -> (template, the word list of each slot in order); one word drawn per slot.
EN_PHRASES = {
    "hiding place": ("the {} {} of the {} {}", (_ORD, _BOX, _WOOD, _FURN)),
    "morning habit": ("{} before {}", (_CHORE, _MEAL)),
    "plan for the weekend": ("{} with {}", (_PROJECT, _WITH)),
    "lost property": ("a {} {} with {}", (_COLOUR, _ITEM, _DETAIL)),
    "route home": ("past the {} along {}", (_PLACE, _STREET)),
}

ZH_SURNAME = ["欧阳", "林", "郑", "黄", "何", "宋", "谢", "罗", "许", "冯", "韩", "曹", "彭", "唐", "蒋", "沈"]
ZH_GIVEN = ["晓明", "雨桐", "子涵", "建国", "思远", "婉清", "浩然", "佳怡", "志强", "若兰", "一鸣", "秋菊", "海燕", "俊杰"]
ZH_GROUPS = ["港务处", "北区仓库", "河边诊所", "夜班小组", "象棋俱乐部", "种子库", "气象站", "老天文台", "印刷厂",
             "合唱团", "轮渡公司", "山间小屋", "档案馆", "划艇队"]
ZH_NUMBER_ATTRS = ["储物柜号码", "档案编号", "房间号", "车票号码", "账户号码", "工牌号码", "序列号", "订单号",
                   "门禁密码", "快递单号", "许可证号", "会员编号", "座位号", "保险箱密码"]
ZH_WORD_ATTRS = {
    "最喜欢的颜色": ["深红色", "青绿色", "琥珀色", "紫罗兰色", "赭石色", "靛蓝色", "橄榄绿", "银灰色", "藏青色"],
    "最喜欢的水果": ["杏子", "芒果", "荔枝", "木瓜", "柿子", "石榴", "橘子", "番石榴", "猕猴桃", "菠萝"],
    "幸运动物": ["水獭", "苍鹭", "猞猁", "獾", "猎鹰", "乌龟", "壁虎", "海象", "朱鹮", "土拨鼠"],
    "暗号": ["灯笼", "草地", "花岗岩", "口哨", "顶针", "指南针", "藏红花", "杜松", "石英", "鹅卵石", "果园"],
    "选的乐器": ["大提琴", "双簧管", "竖琴", "二胡", "琵琶", "手风琴", "单簧管", "尤克里里", "古筝"],
}
_ZH_NUM = ["一", "二", "三", "四", "五", "六"]
_ZH_WOOD = ["橡木", "松木", "胡桃木", "桦木", "樟木", "枫木"]
_ZH_FURN = ["书桌", "衣柜", "五斗柜", "书架", "碗柜", "工作台", "樟木箱"]
_ZH_BOX = ["抽屉", "隔层", "格子", "盒子"]
_ZH_CHORE = ["遛狗", "熨衬衫", "扫门廊", "给挂钟上弦", "给阳台上的花浇水", "擦旧皮鞋", "在窗边做伸展", "写一封短信",
             "磨咖啡豆", "做二十个俯卧撑", "取信", "整理工具间", "给猫梳毛", "补袜子"]
_ZH_WHEN = ["早饭前", "上班前", "开会前", "公交车来之前", "家里人起床前"]
_ZH_PROJECT = ["修篱笆", "整理老照片", "粉刷小棚子", "做一个鸟窝", "清理阁楼", "种郁金香球根", "烤黑麦面包",
               "修自行车轮子", "组装书架", "扫描家信", "给钢琴调音", "洗车"]
_ZH_WITH = ["弟弟", "邻居", "双胞胎", "老朋友", "两个表哥", "全家人", "同事"]
_ZH_COLOUR = ["绿色", "灰色", "棕色", "黑色", "白色", "橙色", "紫色"]
_ZH_ITEM = ["雨伞", "行李箱", "笔记本", "茶壶", "手表", "背包", "围巾", "台灯", "夹克", "保温杯"]
_ZH_DETAIL = ["弯了的把手", "断了的带子", "铜扣", "缺角的盖子", "掉了的扣子", "裂开的表盘", "长拉链", "木头旋钮"]
_ZH_PLACE = ["面包店", "消防站", "图书馆", "邮局", "石头教堂", "学校大门", "洗衣店", "药店"]
_ZH_STREET = ["铁路线", "石桥", "长长的树篱", "电车总站", "墓园围墙", "安静的小巷", "停车场"]


ZH_PHRASES = {
    "藏东西的地方": ("{}{}的第{}个{}里", (_ZH_WOOD, _ZH_FURN, _ZH_NUM, _ZH_BOX)),
    "早上的习惯": ("{}{}", (_ZH_WHEN, _ZH_CHORE)),
    "周末的计划": ("和{}一起{}", (_ZH_WITH, _ZH_PROJECT)),
    "丢失的东西": ("一件带{}的{}{}", (_ZH_DETAIL, _ZH_COLOUR, _ZH_ITEM)),
    "回家的路线": ("经过{}再沿着{}走", (_ZH_PLACE, _ZH_STREET)),
}

# Templates: {s} subject, {S} the same capitalised, {v} value. A statement holds {v} exactly as the answer
# restates it (v4: never capitalised, so a copy of the stated value is the answer, token for token).
STATEMENTS = {
    "en": [
        "{S} is {v}.", "{S} is {v}.", "For the record, {s} is {v}.", "Note that {s} is {v}.",
        "According to the register, {s} is {v}.", "Please remember: {s} is {v}.",
        "It was written down that {s} is {v}.",
        "{S} is {v}. Keep it in mind: {v} is {s}.", "Mark it: {v} — that is {s}.",
        "Once more, {s} is {v}. Yes, {s} is {v}.", "Write this down: {s} is {v}, nothing else.",
    ],
    "zh": [
        "{s}是{v}。", "{s}是{v}。", "请记住，{s}是{v}。", "据登记，{s}是{v}。", "备注：{s}是{v}。",
        "{s}是{v}。记好了，{v}就是{s}。", "{v}——这就是{s}。", "再说一遍，{s}是{v}。没错，{s}是{v}。",
    ],
}
# Question/answer pairs: the answer ends with "{S} is" + " {v}." (the evaluation's answer shape, never its words).
QUESTIONS = {
    "en": [
        ("Q: What is {s}?\nA: ", "{S} is {v}."),
        ("Question: What is {s}?\nAnswer: ", "{S} is {v}."),
        ("Question: What was {s}?\nAnswer: ", "{S} is {v}."),
        ("What is {s}? ", "{S} is {v}."),
        ("What is {s}? ", "{S} is {v}."),
        ("Recall {s}.\n", "{S} is {v}."),
        ("Tell me {s}.\n", "{S} is {v}."),
        ("Q: Do you know {s}?\nA: Yes. ", "{S} is {v}."),
        ("From the text above, {s} is", " {v}."),
        ("Fill in the blank: {s} is", " {v}."),
    ],
    "zh": [
        ("问题：{s}是什么？\n回答：", "{s}是{v}。"),
        ("问题：{s}是什么？\n回答：", "{s}是{v}。"),
        ("问：{s}是什么？\n答：", "{s}是{v}。"),
        ("{s}是什么？", "{s}是{v}。"),
        ("请回忆{s}。\n", "{s}是{v}。"),
        ("根据上文，{s}是", "{v}。"),
    ],
}
INTROS = {
    "en": ["", "", "Notes from the records office.\n\n",
           "Read the text below; some records are asked about at the end.\n\n", "Memo.\n\n",
           "The following pages include several records.\n\n"],
    "zh": ["", "", "备忘录。\n\n", "以下几页里有几条记录，最后会问到。\n\n", "档案室的笔记。\n\n"],
}

# Repetitive haystacks: "The {noun} is {adj}." and short set phrases, never the passkey's garbage.
_REP_NOUN = ["kettle", "road", "door", "lamp", "bench", "window", "bridge", "wall", "floor", "bucket", "rope", "field",
             "river", "room", "coat", "bread", "stone", "path", "roof", "cup"]
_REP_ADJ = ["warm", "long", "open", "quiet", "old", "wet", "dark", "wide", "heavy", "still", "cold", "full", "empty",
            "soft", "bright", "narrow", "clean", "low", "high", "dry"]
_REP_SET = ["Here we are.", "Off we went.", "On and on it goes.", "Back we come.", "Up and down we walk.",
            "So it goes.", "Round and round.", "That is all.", "Nothing changes.", "And so on."]
_ZH_REP_NOUN = ["水壶", "道路", "门", "灯", "长椅", "窗户", "桥", "墙", "地板", "水桶", "绳子", "田野", "屋顶", "杯子"]
_ZH_REP_ADJ = ["暖", "长", "旧", "湿", "黑", "宽", "重", "冷", "满", "空", "软", "亮", "窄", "干净", "干"]
_ZH_REP_SET = ["我们到了。", "走吧走吧。", "一圈又一圈。", "就是这样。", "什么都没变。", "日复一日。"]


# v3: open-vocabulary spans (megaindex.data.retrieval_subjects) never start or end with a function word
# and never hold a copula ("The {s} is {v}." must have one "is" between subject and value).
EDGE_STOPWORDS = frozenset(
    "the a an and or but nor of to in on at by for from with into onto upon as than that this these those it its "
    "he she they we you i me my our your his her their them us him who whom whose which what when where why how "
    "not no so if then there here all any some each every such also only very too just can could may might must "
    "shall should will would do does did has have had been being let thou thy thee hath doth while because since "
    "although though until unless whether after before about over under between through during without within "
    "against among out up down off again further once more most other same own both few many much now even still "
    "yet well however thus therefore hence else ever never often always per via whereas whose one two".split())
BANNED_WORDS = frozenset("is are was were be am isn".split())

# v3 same-form documents (megaindex.data.retrieval_same_form): short closed-list subjects "the {mod} {noun}",
# their distractors' values, and the questions, whose answers all restate "{S} is {v}.".
SF_NOUN = ["gate", "key", "lamp", "door", "bell", "clock", "tower", "well", "cart", "barn", "mill", "boat", "tent",
           "ladder", "kettle", "drum", "shed", "fence", "mirror", "basket", "wagon", "stove", "cellar", "chimney",
           "anchor", "lantern", "bucket", "bench", "code", "number", "label", "token", "signal", "switch", "valve"]
SF_MOD = ["north", "south", "east", "west", "harbour", "garden", "kitchen", "station", "upper", "lower", "back",
          "front", "iron", "copper", "wooden", "stone", "village", "market", "river", "school", "night", "winter",
          "corner", "hill", "farm", "attic", "office", "tower", "spare", "red"]
SF_ADJ = ["warm", "long", "open", "quiet", "old", "wet", "dark", "wide", "heavy", "still", "cold", "full", "empty",
          "soft", "bright", "narrow", "clean", "low", "high", "dry", "closed", "broken", "new", "loud", "rusty",
          "locked", "shut", "tall", "small", "painted"]
SAME_FORM_QUESTIONS = {
    "en": [
        ("{S} is", " {v}."),
        ("{S} is", " {v}."),
        ("What is {s}? {S} is", " {v}."),
        ("What is {s}? {S} is", " {v}."),
        ("Q: What is {s}?\nA: ", "{S} is {v}."),
        ("Question: What is {s}?\nAnswer: ", "{S} is {v}."),
        ("From the text above, {s} is", " {v}."),
        ("Complete the sentence from the text. {S} is", " {v}."),
    ],
    "zh": [
        ("{s}是", "{v}。"),
        ("{s}是什么？{s}是", "{v}。"),
        ("问题：{s}是什么？\n回答：", "{s}是{v}。"),
        ("根据上文，{s}是", "{v}。"),
    ],
}
ZH_SF_NOUN = ["钥匙", "大门", "灯", "钟", "水井", "木桶", "梯子", "炉子", "篮子", "镜子", "烟囱", "地窖", "铃铛",
              "密码", "编号", "号码", "标签", "开关", "阀门", "帐篷", "马车", "磨坊", "谷仓", "篱笆"]
ZH_SF_MOD = ["北边", "南边", "东边", "西边", "港口", "花园", "厨房", "车站", "楼上", "楼下", "后院", "前门", "铁",
             "铜", "木头", "石头", "村口", "市场", "河边", "夜班", "冬天", "拐角", "山上", "农场", "阁楼", "办公室"]
ZH_SF_ADJ = ["暖", "长", "旧", "湿", "黑", "宽", "重", "冷", "满", "空", "软", "亮", "窄", "干净", "干", "关着", "坏",
             "新", "响", "生锈", "锁着", "高", "小"]


def repetitive_unit(lang: str, rng: random.Random) -> list[str]:
    """3..6 short generic sentences (mostly "X is Y."), repeated by the caller to fill a haystack."""
    k = rng.randint(3, 6)
    out: list[str] = []
    while len(out) < k:
        if rng.random() < 0.25:
            s = rng.choice(_REP_SET if lang == "en" else _ZH_REP_SET)
        elif lang == "en":
            s = f"The {rng.choice(_REP_NOUN)} is {rng.choice(_REP_ADJ)}."
        else:
            s = f"{rng.choice(_ZH_REP_NOUN)}是{rng.choice(_ZH_REP_ADJ)}的。"
        if s not in out:
            out.append(s)
    return out


def owner(lang: str, rng: random.Random) -> str:
    if lang == "zh":
        return rng.choice(ZH_GROUPS) if rng.random() < 0.25 else rng.choice(ZH_SURNAME) + rng.choice(ZH_GIVEN)
    return rng.choice(EN_GROUPS) if rng.random() < 0.25 else f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"


def attributes(lang: str, kind: str) -> list[str]:
    """The attributes whose values are of `kind` ("number", "word", "phrase", "open" or "random": the open ones)."""
    table = {"en": (EN_NUMBER_ATTRS, EN_WORD_ATTRS, EN_PHRASES, EN_OPEN_ATTRS),
             "zh": (ZH_NUMBER_ATTRS, ZH_WORD_ATTRS, ZH_PHRASES, ZH_OPEN_ATTRS)}
    numbers, words, phrases, open_ = table[lang]
    return {"number": numbers, "word": list(words), "phrase": list(phrases), "open": open_, "random": open_}[kind]


def value(lang: str, kind: str, attr: str, rng: random.Random) -> str:
    """A value for `attr`: a 4-7 digit number, a word of the attribute's list, or a 2-8 word phrase (an "open"
    value comes from the filler: megaindex.data.retrieval_subjects.open_value, a "random" one from its vocabulary:
    random_value)."""
    if kind in ("open", "random"):
        raise ValueError(f"{kind} values come from the filler: retrieval_subjects.{kind}_value draws them")
    if kind == "number":
        digits = rng.randint(4, 7)
        return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    if kind == "word":
        return rng.choice((EN_WORD_ATTRS if lang == "en" else ZH_WORD_ATTRS)[attr])
    template, slots = (EN_PHRASES if lang == "en" else ZH_PHRASES)[attr]
    return template.format(*[rng.choice(words) for words in slots])


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [x for item in obj for x in _strings(item)]
    return []


def vocabulary() -> list[str]:
    """Every word-list entry and template (for the disjointness check against the evaluation's needles)."""
    return [x for name, obj in globals().items() if isinstance(obj, (list, dict))
            and (name.isupper() or (name.startswith("_") and not name.startswith("__"))) for x in _strings(obj)]
