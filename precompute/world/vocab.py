"""The closed vocabulary of the synthetic world.

Everything the world can draw or say is listed here, by hand, so that a
word-level tokenizer built from it is complete and the same on every machine.
"""

from __future__ import annotations

import re

# Canonical object colours. Chosen far apart in RGB (the closest pair, orange and
# yellow, differ by ~80 in green) so that the jitter applied when drawing
# (<= ~10 per channel plus a few percent of shading) can never make one colour
# look like another, even at 64 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 90, 225),
    "yellow": (245, 215, 30),
    "orange": (250, 135, 20),
    "purple": (140, 50, 190),
    "pink": (245, 135, 195),
    "brown": (125, 75, 35),
}

# Neutral inks for text. They are not object colours: a word written in black
# says nothing about colour, which is what lets colour words be read apart from
# the colour they are written in.
INKS: dict[str, tuple[int, int, int]] = {"black": (15, 15, 15), "white": (245, 245, 245)}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "heart": "hearts",
}

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four")

# Hand-written, lowercase, letters only, at most 8 letters so that every word
# stays legible when written across a 64 px image. Words that name a colour,
# a shape, a number, a background or the captions' own framing ("photo",
# "word", "sign", ...) are deliberately absent: they would blur the signals the
# world is built to teach.
COMMON_WORDS: tuple[str, ...] = (
    # food and drink
    "apple", "banana", "bread", "cake", "pizza", "cheese", "coffee", "tea",
    "milk", "water", "rice", "soup", "egg", "sugar", "salt", "honey",
    "lemon", "cherry", "grape", "melon", "pear", "peach", "carrot", "potato",
    "tomato", "onion", "corn", "cookie", "candy", "butter", "juice", "wine",
    "beer", "salad", "pasta", "meat", "fish", "chicken", "burger", "sandwich",
    "pie", "jam", "nut", "bean", "pepper",
    # animals
    "dog", "cat", "bird", "horse", "cow", "pig", "sheep", "goat",
    "mouse", "rabbit", "lion", "tiger", "bear", "wolf", "fox", "deer",
    "monkey", "snake", "frog", "duck", "owl", "eagle", "shark", "whale",
    "dolphin", "bee", "ant", "spider", "turtle", "zebra", "camel", "panda",
    "penguin", "elephant", "giraffe", "moth", "crab", "snail",
    # things
    "house", "car", "bus", "train", "boat", "plane", "bike", "chair",
    "table", "bed", "door", "window", "lamp", "clock", "phone", "book",
    "pen", "pencil", "paper", "cup", "plate", "spoon", "fork", "knife",
    "bottle", "bag", "key", "hat", "shoe", "shirt", "dress", "coat",
    "watch", "ball", "kite", "doll", "toy", "drum", "guitar", "piano",
    "violin", "camera", "radio", "computer", "laptop", "bell", "candle", "mirror",
    "brush", "soap", "towel", "umbrella", "ladder", "rope", "bucket", "wheel",
    "hammer", "sofa", "pillow", "basket", "rocket", "robot", "truck", "ship",
    # nature
    "tree", "flower", "rose", "grass", "leaf", "forest", "river", "lake",
    "sea", "ocean", "beach", "island", "mountain", "hill", "rock", "stone",
    "sand", "snow", "rain", "cloud", "wind", "storm", "sun", "moon",
    "sky", "fire", "ice", "earth", "garden", "field", "desert", "volcano",
    "winter", "summer", "spring", "autumn", "night", "morning",
    # places
    "city", "town", "school", "church", "bank", "shop", "market", "hotel",
    "hospital", "office", "park", "farm", "bridge", "road", "street", "castle",
    "tower", "prison", "museum", "library", "kitchen", "bathroom", "bedroom", "garage",
    "airport", "station", "zoo", "cinema", "theatre", "village",
    # people
    "man", "woman", "child", "baby", "king", "queen", "doctor", "nurse",
    "teacher", "police", "soldier", "farmer", "artist", "friend", "family", "mother",
    "father", "sister", "brother", "girl", "boy", "chef", "pilot", "student",
    # ideas
    "music", "art", "love", "peace", "war", "hope", "fear", "joy",
    "time", "money", "power", "dream", "idea", "story", "game", "sport",
    "news", "health", "death", "life", "magic", "danger", "freedom", "science",
    "history", "nature", "travel", "party", "birthday", "holiday", "justice", "truth",
    # describing words
    "happy", "sad", "angry", "calm", "big", "small", "hot", "cold",
    "fast", "slow", "old", "new", "young", "good", "bad", "strong",
    "weak", "rich", "poor", "clean", "dirty", "soft", "hard", "loud",
    "quiet", "bright", "funny", "scary", "sweet", "sour", "tall", "short",
    "heavy", "empty", "full", "free", "open", "closed", "wet", "dry",
    "sick", "tired", "brave", "lucky", "lazy", "busy", "smart", "crazy",
    "ugly", "pretty", "lovely", "wild", "safe", "famous",
    # doing words
    "run", "walk", "jump", "swim", "fly", "eat", "drink", "sleep",
    "read", "write", "sing", "dance", "play", "work", "cook", "drive",
    "build", "think", "laugh", "cry", "smile", "talk", "listen", "learn",
    "teach", "buy", "sell", "stop", "go", "help", "wait", "push",
    "pull", "climb", "throw", "catch", "fight", "win", "lose", "paint",
    "yes", "no", "hello", "welcome", "exit", "sale",
)

# The words that carry the world's meaning: a picture of one of these can be
# captioned by what the word means, not just by what is written.
MEANING_WORDS: tuple[str, ...] = tuple(COLORS) + SHAPES + NUMBER_WORDS


def _dedupe(words) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


WORDS: tuple[str, ...] = _dedupe(MEANING_WORDS + COMMON_WORDS)

_NON_WORD = re.compile(r"[^a-z0-9\s]+")


def tokenize_caption(text: str) -> list[str]:
    """Split a caption the way the word-level tokenizer does.

    Punctuation and quotes become spaces (not deleted) so that the word 'apple'
    in quotes and the bare word apple are the same token, and so that nothing
    is ever glued together into a word the vocabulary does not know.
    """
    return _NON_WORD.sub(" ", text.lower()).split()
