"""Regenerates data_recipes/general_prompts.en.jsonl (written for injector; Apache-2.0)."""
import json
import random
from pathlib import Path

random.seed(7)
P = []
topics = ["photosynthesis", "gravity", "a rainbow", "the water cycle", "an eclipse", "a volcano", "inflation",
          "a vaccine", "recycling", "democracy", "a black hole", "electricity", "friction", "evaporation",
          "an earthquake", "a compass", "the internet", "a battery", "a thermometer", "the moon's phases",
          "a hurricane", "compound interest", "a calendar", "an atom", "a cell", "erosion", "a glacier",
          "the immune system", "sound", "a lever"]
for t in topics:
    P.append(f"Explain {t} in one or two sentences.")
for t in topics[:20]:
    P.append(f"Give a simple example that helps a child understand {t}.")
words = ["happy", "fast", "big", "cold", "bright", "quiet", "brave", "angry", "tiny", "smart", "old", "strong",
         "easy", "rich", "calm", "funny", "clean", "loud", "soft", "early"]
for w in words:
    P.append(f"What is a synonym for '{w}'?")
    P.append(f"What is the opposite of '{w}'?")
for a, b in [(12, 7), (25, 17), (8, 9), (144, 12), (33, 66), (100, 45), (7, 8), (15, 4), (81, 9), (19, 23),
             (250, 125), (6, 13), (48, 6), (71, 29), (9, 11)]:
    P.append(random.choice([f"What is {a} plus {b}?", f"What is {a} times {b}?", f"What is {a} minus {b}?",
                            f"Add {a} and {b}.", f"Multiply {a} by {b}."]))
themes = ["autumn", "the sea", "a city at night", "friendship", "a rainy day", "mountains", "coffee", "a cat",
          "the first snow", "a library"]
for t in themes:
    P.append(f"Write a short poem about {t}.")
    P.append(f"Write one sentence describing {t}.")
for thing in ["a good night's sleep", "drinking water", "regular exercise", "reading books", "learning a language",
              "saving money", "walking outdoors", "eating vegetables", "taking breaks at work", "keeping a diary"]:
    P.append(f"List three benefits of {thing}.")
    P.append(f"Give one tip for {thing.replace('a good', 'getting a good')}.")
for task in ["boil an egg", "make a cup of tea", "plant a seed", "tie a shoelace", "write a thank-you note",
             "prepare for a job interview", "clean a computer keyboard", "start a vegetable garden",
             "pack for a weekend trip", "study for an exam", "make a paper airplane", "change a light bulb"]:
    P.append(f"How do I {task}?")
    P.append(f"Describe the steps to {task}, briefly.")
for s in ["The cat sat on the mat.", "I am going to the market.", "The weather is nice today.",
          "She reads a book every week.", "We will meet tomorrow morning.", "Thank you for your help."]:
    P.append(f"Translate into French: {s}")
    P.append(f"Rewrite this sentence in the past tense: {s}")
    P.append(f"How many words are in this sentence: {s}")
for cat in ["fruits", "vegetables", "colours", "musical instruments", "farm animals", "sports", "planets",
            "kitchen tools", "types of trees", "ocean animals", "board games", "rivers", "birds", "metals",
            "shapes"]:
    P.append(f"Name three {cat}.")
    P.append(f"Which {cat} do people mention most often? Give a short answer.")
for q in ["Why is the sky blue?", "Why do leaves change colour in autumn?", "Why do we need sleep?",
          "Why does ice float on water?", "Why do cats purr?", "Why is exercise good for the heart?",
          "Why do onions make people cry?", "Why do we have seasons?", "Why is the ocean salty?",
          "Why do birds migrate?", "Why does bread rise?", "Why do stars twinkle?", "Why do we yawn?",
          "Why do metals feel cold?", "Why is recycling useful?"]:
    P.append(q)
for a, b in [("a cat", "a dog"), ("tea", "coffee"), ("a train", "a plane"), ("summer", "winter"),
             ("a book", "a film"), ("the sun", "the moon"), ("a city", "a village"), ("walking", "cycling"),
             ("email", "a letter"), ("a lake", "a sea")]:
    P.append(f"What is one difference between {a} and {b}?")
for x in ["a good friend", "a kind neighbour", "a helpful teacher", "a careful driver", "a good listener",
          "a healthy breakfast", "a tidy room", "a fair game", "a good story", "a safe password"]:
    P.append(f"What makes {x}?")
for t in ["a birthday party", "a school trip", "a picnic", "a family dinner", "a science fair",
          "a charity run", "a book club meeting", "a garden party"]:
    P.append(f"Suggest a name for {t}.")
    P.append(f"Write a short invitation to {t}.")
for n in [3, 5, 7, 10, 12, 20, 24, 31, 50, 100]:
    P.append(random.choice([f"Is {n} an even number?", f"What is half of {n}?", f"What is {n} squared?",
                            f"Count from 1 to {min(n, 10)}."]))
for w in ["apple", "river", "music", "window", "garden", "planet", "bridge", "pencil", "candle", "island"]:
    P.append(f"Use the word '{w}' in a sentence.")
    P.append(f"How do you spell '{w}' backwards?")
for t in ["Summarise in one sentence why people keep pets.",
          "Summarise in one sentence what a map is for.",
          "Give a short greeting for a colleague's first day.",
          "Write a polite reply declining an invitation.",
          "Suggest a healthy snack.", "Suggest a hobby for a rainy afternoon.",
          "What should I bring to a beach day?", "What is a good way to start a presentation?",
          "Tell me a fun fact about animals.", "Tell me a short joke.",
          "What is a healthy morning routine?", "How can I remember new vocabulary?",
          "Describe a sunrise in one sentence.", "What is the purpose of a dictionary?",
          "Give an example of a renewable energy source.", "What do bees make?",
          "What do you call a baby cat?", "How many legs does a spider have?",
          "What is ice made of?", "What do plants need to grow?"]:
    P.append(t)
P = list(dict.fromkeys(P))
print(len(P))
with open(Path(__file__).resolve().parent.parent / "data_recipes" / "general_prompts.en.jsonl", "w") as f:
    for i, p in enumerate(P):
        f.write(json.dumps({"id": f"g{i:03d}", "prompt": p}) + "\n")
