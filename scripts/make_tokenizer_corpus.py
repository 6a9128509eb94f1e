"""Write tests/data/tokenizer_corpus.json: the texts on which every tokenizer of the project must match the original.

The original is transformers 4.12.3's slow DistilBertTokenizer; these texts aim at the places where tokenizer
implementations drift apart (Unicode categories and versions, normalization, whitespace, control characters,
special-token strings, word-length and sequence-length limits). Deterministic; the JSON is committed.

    python scripts/make_tokenizer_corpus.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "tokenizer_corpus.json"

CAPTIONS = [
    "Кошка спит на диване.",
    "Рыжий кот сидит на подоконнике и смотрит в окно.",
    "Собака бежит по пляжу за мячом.",
    "Ракета взлетает с космодрома в облаке дыма.",
    "Астронавт в открытом космосе на фоне Земли.",
    "Чашка горячего кофе на деревянном столе.",
    "Столбчатая диаграмма продаж за 2023 год.",
    "График зависимости температуры от времени.",
    "Синяя машина стоит у подъезда.",
    "Старый деревянный дом в деревне.",
    "Красный цветок в горшке на балконе.",
    "Осенний лес в солнечный день.",
    "Море и скалы на закате.",
    "Ёжик несёт яблоко на спине.",
    "Йошкар-Ола зимой, вид с высоты.",
    "Ёлка, украшенная гирляндами, стоит в углу комнаты.",
    "Это фотография моего кота по имени Барсик.",
    "Два щенка играют с верёвкой во дворе.",
    "Пингвины стоят на льдине посреди океана.",
    "Люди ждут поезд на платформе метро.",
    "Девочка читает книгу под деревом.",
    "Повар режет овощи на кухне ресторана.",
    "Футболисты празднуют гол на стадионе.",
    "Вид на Кремль с Большого Москворецкого моста.",
    "Снежная гора отражается в озере.",
    "Велосипед прислонён к кирпичной стене.",
    "Тарелка борща со сметаной и зеленью.",
    "Скриншот экрана смартфона с уведомлениями.",
    "Рукописный текст на листе в клетку.",
    "Мультяшный кот с большими глазами.",
]

LABELS = [
    "кошка", "кот", "собака", "ракета", "космос", "астронавт", "кофе", "чашка", "диаграмма", "график",
    "машина", "дом", "цветок", "лес", "море", "Кошка", "КОТ", "Собаки", "ракеты", "Космонавт",
    "ёж", "Ёж", "йогурт", "Йод", "самолёт", "ЁЛКА", "чай", "мой", "Йемен", "ещё",
]
PROMPTS = ["фото {}", "Фотография: {}", "это {}", "изображение, на котором {}", "рисунок «{}»"]

# Words the demo vocabulary was never trained on: WordPiece must fall back to pieces or [UNK].
RARE = [
    "Достопримечательность",
    "человеконенавистничество",
    "рентгеноэлектрокардиографический",
    "Превысокомногорассмотрительствующий",
    "ЗАРЕГИСТРИРОВАВШИЕСЯ",
    "выхухоль",
    "Щщщщ",
    "ъъъ ьь ЪЬ",
    "Ёёёёё ЙйЙй",
    "подъёмный кран подъехал",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "абракадабра-2000",
]

MIXED = [
    "iPhone 15 Pro Max за 129 990 ₽",
    "Wi-Fi не работает, перезагрузите роутер TP-Link",
    "Модель CLIP (Contrastive Language-Image Pre-training)",
    "GPU NVIDIA H100 и TensorRT 10.0",
    "Python3.11 и PyTorch2.4",
    "Москва-Сити vs Manhattan",
    "Кот Tom и мышь Jerry",
    "COVID-19 и ОРВИ",
    "USB-C → HDMI переходник",
    "Samsung Galaxy S24 Ultra в чехле",
    "mixedСЛОВОword и словоMIXED",
    "сaмoлёт с латинскими a и o внутри",
    "ABCабвXYZэюя",
    "Tesla Model 3 едет по МКАД",
]

NUMBERS = [
    "0",
    "1234567890",
    "3,14159 и 2.71828",
    "1 000 000 рублей",
    "+7 (495) 123-45-67",
    "12.04.1961, 09:07",
    "50% скидка, 100$ и 20€",
    "№ 5, 25 °C, 2²=4",
    "½ ⅓ ¼ ¾ Ⅻ ⅷ",
    "١٢٣ ٤٥٦ (арабские цифры)",
    "１２３ полноширинные цифры",
    "3-й этаж, 21-го века, 90-е годы",
]

SCRIPTS = [
    "猫が好きです",
    "我爱北京天安门",
    "一只猫 и одна собака",
    "漢字かな交じり文",
    "한국어 텍스트",
    "القطة نائمة على الأريكة",
    "مرحبا بالعالم",
    "שלום עולם",
    "Ελληνικά: ΟΔΟΣ και οδός",
    "ქართული ენა",
    "हिन्दी भाषा",
    "ภาษาไทย",
    "Ἀθῆναι",
    "𠀀𠀁 редкие иероглифы расширения B",
    "豈 更 車 (совместимые иероглифы)",
    "Українська: ґ, є, ї, і",
    "Беларуская: ў",
    "Српски: ђ, ћ, џ, љ, њ",
    "Қазақ тілі: ә, ғ, қ, ң, ө, ұ, ү, һ",
]

ACCENTS = [
    "café",
    "naïve",
    "résumé и кафе",
    "Ångström",
    "Crème brûlée",
    "São Paulo",
    "Zürich, Köln, München",
    "façade",
    "ñandú",
    "ŁÓDŹ",
    "cafe\u0301 (decomposed)",
    "A\u030angstro\u0308m (decomposed)",
    "Ва\u0301жно: ударе\u0301ние",
    "за\u0300мок и замо\u0301к",
    "\u212b angstrom sign и \u2126 ohm sign",
]

# ё/й precomposed and decomposed (е + U+0308, и + U+0306): 4.12.3 does not normalize, so the two spell differently.
YO_YOT = [
    "ёж Ёж ЁЖ",
    "йод Йод ЙОД",
    "е\u0308ж Е\u0308ж",
    "и\u0306од И\u0306од",
    "мои\u0306 дом",
    "ещё и еще\u0308",
    "Ёлка и Е\u0308лка",
    "чай и чаи\u0306",
    "\u0306 одинокий combining breve",
    "\u0308\u0308\u0308",
    "подъём, объём, съёмка",
    "Её, её, ЕЁ",
]

PUNCTUATION = [
    "...",
    "!!!???",
    "«Ёлки-палки», — сказал он.",
    "„Немецкие“ ‚кавычки‘ и “английские” 'одинарные'",
    "Тире — длинное, – короткое, ‑ неразрывный дефис",
    "Многоточие… и ещё…",
    "(скобки) [квадратные] {фигурные} <угловые>",
    "@#$%^&*()_+-=~`|\\/",
    "точка.запятая,двоеточие:точка-с-запятой;",
    "—— ——— …… ,,,, ;;",
    "¿Qué? ¡Sí!",
    "· • ‣ ※ § ¶ † ‡",
    "Слово!!!Слово???Слово",
    "Знак рубля ₽ и доллара $",
]

WEB = [
    "https://example.com/path?q=кошка&lang=ru#top",
    "http://пример.рф/страница",
    "www.example.org",
    "user.name+tag@example.co.uk",
    "пишите: почта@пример.рф",
    "#космос #кот #ЁлкиПалки",
    "@username привет!",
    "C:\\Users\\Иван\\Документы\\фото.jpg",
    "/usr/local/bin/python3",
    "<b>жирный</b> &amp; <i>курсив</i>",
    "{\"key\": \"значение\", \"n\": 1}",
    "SELECT * FROM cats WHERE name = 'Барсик';",
    "def f(x): return x ** 2",
]

SPECIAL_STRINGS = [
    "[CLS]",
    "[SEP]",
    "[PAD]",
    "[MASK]",
    "[UNK]",
    "[CLS] кот [SEP]",
    "кот[MASK]собака",
    "[CLS][SEP][PAD][MASK][UNK]",
    "[cls] [Cls] [ CLS ]",
    "[unused1] [unused99]",
    "##",
    "##ок",
    "кот ##ёнок",
    "##кот## ####",
    "[CLS",
    "CLS]",
]

CASE = [
    "ВСЕ БУКВЫ ЗАГЛАВНЫЕ",
    "все буквы строчные",
    "ВсЕ бУкВы ВпЕрЕмЕшКу",
    "КОШКА кошка Кошка кОШКА",
    "MOSCOW moscow Moscow",
    "İstanbul ıi",
    "STRASSE straße ẞ",
]

WHITESPACE_AND_CONTROL = [
    "",
    " ",
    "     ",
    "\t",
    "\n",
    "\r\n",
    "\t\n \r",
    "кот\tи\tсобака",
    "первая строка\nвторая строка",
    "  пробелы   по   краям  ",
    "неразрывный\u00a0пробел",
    "узкий\u202fнеразрывный",
    "тонкий\u2009пробел",
    "идеографический\u3000пробел",
    "разделитель\u2028строк и\u2029абзацев",
    "zero\u200bwidth\u200cspace\u200djoiner",
    "\ufeffBOM в начале",
    "нуль\x00символ",
    "звонок\x07и escape\x1b[31mкрасный\x1b[0m",
    "удаление\x7fсимвол",
    "вертикальная\x0bтабуляция и\x0cперевод страницы",
    "разделители\x1c\x1d\x1e\x1fинформации",
    "NEL\u0085символ",
    "замена\ufffdсимвол",
    "мягкий\u00adперенос",
    "слева\u200eнаправо\u200fсправа",
    "\u202eперевёрнутый текст\u202c",
    "частное\ue000использование",
    "не\U000e0001назначенный тег",
    "\u0378 неназначенный кодпункт",
    "монгольский\u180eразделитель",
    "ogham\u1680space",
    "\u00a0\u2009\u3000",
]

EMOJI = [
    "😀",
    "Кот 🐱 и собака 🐶",
    "🚀🚀🚀 в космос!",
    "☕ кофе",
    "👍🏽 отлично",
    "👨‍👩‍👧 семья",
    "🇷🇺 флаг",
    "❤️ сердце с селектором",
    "❤ без селектора",
    "🫠 тающее лицо (Unicode 14)",
    "🫨 дрожащее лицо (Unicode 15)",
    "🥰🤩🥳",
    "★☆✓✗→←↑↓",
    "♀♂⚡☀☁☂",
    "𝔐𝔞𝔱𝔥 𝐁𝐨𝐥𝐝 𝕯𝖔𝖚𝖇𝖑𝖊",
    "Ⓐⓑⓒ ①②③",
]

LONG_WORDS = [
    "а" * 99,
    "а" * 100,
    "а" * 101,
    "Ё" * 150,
    "кот" * 40,
    "Превысокомногорассмотрительствующий" * 3,
    "слово-" * 30 + "конец",
    "x" * 100 + " и после",
    "ы" * 300 + " кот",
]


def sequence_length_texts() -> list[str]:
    """Texts around and far beyond the 77-token limit (75 word tokens + [CLS] + [SEP] fill it exactly)."""
    return [
        " ".join(["кот"] * 74),
        " ".join(["кот"] * 75),
        " ".join(["кот"] * 76),
        " ".join(["кот"] * 200),
        "." * 76,
        "!" * 1000,
        "Ёж " * 500,
        "[CLS] " * 100,
    ]


def long_texts(sentences: list[str]) -> list[str]:
    """Paragraphs far longer than 77 tokens, built from the captions above."""
    return [
        " ".join(sentences),
        "\n".join(sentences[::-1]),
        " ".join(s.upper() for s in sentences[:15]),
        "; ".join(sentences[5:25]) + " " + " ".join(RARE),
    ]


def build_corpus() -> list[str]:
    prompted = [prompt.format(label) for prompt in PROMPTS for label in LABELS[:15]]
    texts = (
        CAPTIONS
        + LABELS
        + prompted
        + RARE
        + MIXED
        + NUMBERS
        + SCRIPTS
        + ACCENTS
        + YO_YOT
        + PUNCTUATION
        + WEB
        + SPECIAL_STRINGS
        + CASE
        + WHITESPACE_AND_CONTROL
        + EMOJI
        + LONG_WORDS
        + sequence_length_texts()
        + long_texts(CAPTIONS)
    )
    duplicates = {t for t in texts if texts.count(t) > 1}
    if duplicates:
        raise SystemExit(f"duplicate corpus texts: {sorted(duplicates)!r}")
    return texts


def to_json(texts: list[str]) -> str:
    """JSON with readable Cyrillic, but every invisible, control, format or combining character as a \\u escape,
    so a reviewer sees exactly which code points a text holds (json itself escapes only ASCII controls)."""
    out = []
    for char in json.dumps(texts, ensure_ascii=False, indent=1):
        if ord(char) > 127 and unicodedata.category(char)[0] in "CZM":
            out.append(json.dumps(char)[1:-1])
        else:
            out.append(char)
    return "".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    texts = build_corpus()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(to_json(texts))
    print(f"wrote {args.out} ({len(texts)} texts)")


if __name__ == "__main__":
    main()
