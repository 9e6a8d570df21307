//! The built-in corpus: short question/answer dialogue in plain English, written by a deterministic
//! generator (greetings, facts, arithmetic on small numbers, simple reasoning).
//!
//! Every item is a (content, phrasing) pair: the same fact or operands asked with different
//! question templates. The split holds out whole *questions*: each test (and validation) question
//! is a phrasing of its content that never appears in training, while the content itself appears
//! in training under at least one other phrasing. Test exact-match therefore measures whether the
//! model answers questions it has not seen, by relating a new phrasing to what it learned — not
//! whether it knows facts it was never told.
//!
//! Text format, one exchange per line pair: `Q: <question>\nA: <answer>\n`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One question with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaPair {
    pub category: String,
    pub question: String,
    pub answer: String,
}

impl QaPair {
    /// `Q: question\nA: answer\n`
    pub fn to_text(&self) -> String {
        format!("Q: {}\nA: {}\n", self.question, self.answer)
    }
    /// The prompt a model completes: `Q: question\nA:`
    pub fn prompt(&self) -> String {
        format!("Q: {}\nA:", self.question)
    }
}

/// Train / validation / test questions.
#[derive(Debug, Clone)]
pub struct QaCorpus {
    pub train: Vec<QaPair>,
    pub val: Vec<QaPair>,
    pub test: Vec<QaPair>,
}

impl QaCorpus {
    /// Training text: every training pair `repeats` times, shuffled (seeded), concatenated.
    pub fn train_text(&self, repeats: usize, seed: u64) -> String {
        join_shuffled(&self.train, repeats, seed)
    }
    /// Training text with, per character, whether it belongs to an answer (the text after
    /// `A: ` through its newline) and the character offsets where each `Q:` line starts.
    pub fn train_annotated(&self, repeats: usize, seed: u64) -> AnnotatedText {
        annotate(&join_shuffled(&self.train, repeats, seed))
    }
    pub fn val_text(&self) -> String {
        join_shuffled(&self.val, 1, 1)
    }
    pub fn test_text(&self) -> String {
        join_shuffled(&self.test, 1, 2)
    }
    /// All text of all splits (for building a vocabulary that covers them).
    pub fn all_text(&self) -> String {
        self.train.iter().chain(&self.val).chain(&self.test).map(QaPair::to_text).collect()
    }
}

/// Text in `Q: …\nA: …\n` form with per-character annotations.
#[derive(Debug, Clone)]
pub struct AnnotatedText {
    pub text: String,
    /// `answer_mask[i]`: character `i` is part of an answer (including its closing newline).
    pub answer_mask: Vec<bool>,
    /// Character offsets of every `Q:` line start.
    pub question_starts: Vec<usize>,
}

/// Marks answer characters and question starts of a `Q: …\nA: …\n` text.
pub fn annotate(text: &str) -> AnnotatedText {
    let chars: Vec<char> = text.chars().collect();
    let mut answer_mask = vec![false; chars.len()];
    let mut question_starts = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    let mut in_answer = false;
    while i < chars.len() {
        if line_start {
            in_answer = false;
            if chars[i] == 'Q' && chars.get(i + 1) == Some(&':') {
                question_starts.push(i);
            } else if chars[i] == 'A' && chars.get(i + 1) == Some(&':') {
                in_answer = true;
                // Skip the "A: " marker itself: it is the prompt, not the answer.
                i += 3.min(chars.len() - i);
                line_start = false;
                continue;
            }
        }
        answer_mask[i] = in_answer;
        line_start = chars[i] == '\n';
        i += 1;
    }
    AnnotatedText { text: text.to_string(), answer_mask, question_starts }
}

fn join_shuffled(pairs: &[QaPair], repeats: usize, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut items: Vec<&QaPair> = Vec::with_capacity(pairs.len() * repeats);
    for _ in 0..repeats {
        items.extend(pairs.iter());
    }
    items.shuffle(&mut rng);
    items.iter().map(|p| p.to_text()).collect()
}

/// A piece of content asked with several phrasings (`{}`-free templates already filled).
struct Content {
    category: &'static str,
    phrasings: Vec<String>,
    answer: String,
}

const COLORS: &[(&str, &str)] = &[
    ("the sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("the sun", "yellow"),
    ("coal", "black"),
    ("blood", "red"),
    ("a banana", "yellow"),
    ("a strawberry", "red"),
    ("the sea", "blue"),
    ("a crow", "black"),
    ("milk", "white"),
    ("a lemon", "yellow"),
    ("a frog", "green"),
    ("chocolate", "brown"),
    ("a carrot", "orange"),
    ("a plum", "purple"),
];
const CAPITALS: &[(&str, &str)] = &[
    ("france", "paris"),
    ("italy", "rome"),
    ("spain", "madrid"),
    ("germany", "berlin"),
    ("japan", "tokyo"),
    ("egypt", "cairo"),
    ("canada", "ottawa"),
    ("peru", "lima"),
    ("kenya", "nairobi"),
    ("norway", "oslo"),
    ("greece", "athens"),
    ("china", "beijing"),
    ("cuba", "havana"),
    ("russia", "moscow"),
];
const SOUNDS: &[(&str, &str)] = &[
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("owl", "hoot"),
    ("pig", "oink"),
    ("lion", "roar"),
    ("snake", "hiss"),
    ("bee", "buzz"),
];
const OPPOSITES: &[(&str, &str)] = &[
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("day", "night"),
    ("open", "closed"),
    ("light", "dark"),
    ("wet", "dry"),
    ("early", "late"),
    ("full", "empty"),
    ("left", "right"),
    ("yes", "no"),
    ("win", "lose"),
];
const NAMES: &[&str] = &[
    "anna", "ben", "carl", "dora", "emma", "finn", "gina", "hugo", "ida", "jack", "kim", "leo", "mia", "nora", "omar",
    "paul",
];
const THINGS: &[&str] = &["apples", "books", "coins", "cards", "pens"];

fn number_word(n: usize) -> String {
    n.to_string()
}

/// A word-problem sentence from (name, a, thing, b).
type Story = fn(&str, usize, &str, usize) -> String;

fn contents() -> Vec<Content> {
    let mut out = Vec::new();
    let mut add = |category: &'static str, phrasings: Vec<String>, answer: String| {
        out.push(Content { category, phrasings, answer });
    };
    // Greetings: fixed replies to several phrasings; names are copied from the question.
    let greet: &[(&[&str], &str)] = &[
        (&["hello!", "hi!", "hey there!", "hello there!", "hi there!", "hey!"], "hi! how can i help you?"),
        (
            &["good morning!", "morning!", "good morning to you!", "a good morning to you!", "morning to you!"],
            "good morning! how are you?",
        ),
        (
            &["how are you?", "how are you doing?", "how is it going?", "how are things?", "how do you do?"],
            "i am fine, thank you.",
        ),
        (&["thank you!", "thanks!", "thanks a lot!", "thank you so much!", "many thanks!"], "you are welcome!"),
        (&["goodbye!", "bye!", "see you later!", "bye bye!", "see you soon!"], "bye! have a nice day."),
    ];
    for (qs, a) in greet {
        add("greeting", qs.iter().map(|q| q.to_string()).collect(), a.to_string());
    }
    for name in NAMES {
        add(
            "greeting",
            vec![
                format!("hi, i am {name}."),
                format!("hello! my name is {name}."),
                format!("hey, i'm {name}."),
                format!("hi! i am called {name}."),
                format!("hello, {name} here."),
            ],
            format!("hello {name}, nice to meet you!"),
        );
    }
    for (s, c) in COLORS {
        add(
            "fact",
            vec![
                format!("what color is {s}?"),
                format!("what is the color of {s}?"),
                format!("tell me the color of {s}."),
                format!("which color is {s}?"),
                format!("what colour is {s}?"),
                format!("say the color of {s}."),
            ],
            c.to_string(),
        );
    }
    for (s, c) in CAPITALS {
        add(
            "fact",
            vec![
                format!("what is the capital of {s}?"),
                format!("which city is the capital of {s}?"),
                format!("name the capital of {s}."),
                format!("tell me the capital of {s}."),
                format!("what city is the capital of {s}?"),
                format!("the capital of {s} is what?"),
            ],
            c.to_string(),
        );
    }
    for (s, c) in SOUNDS {
        add(
            "fact",
            vec![
                format!("what does a {s} say?"),
                format!("what sound does a {s} make?"),
                format!("how does a {s} sound?"),
                format!("what noise does a {s} make?"),
                format!("tell me what a {s} says."),
            ],
            c.to_string(),
        );
    }
    for (s, c) in OPPOSITES {
        add(
            "fact",
            vec![
                format!("what is the opposite of {s}?"),
                format!("what is the reverse of {s}?"),
                format!("tell me the opposite of {s}."),
                format!("what word is the opposite of {s}?"),
                format!("say the opposite of {s}."),
            ],
            c.to_string(),
        );
    }
    for a in 0..10usize {
        for b in 0..10usize {
            add(
                "arithmetic",
                vec![
                    format!("what is {a} plus {b}?"),
                    format!("how much is {a} plus {b}?"),
                    format!("what is {a} + {b}?"),
                    format!("add {a} and {b}."),
                    format!("what do you get if you add {a} and {b}?"),
                    format!("compute {a} plus {b}."),
                ],
                number_word(a + b),
            );
            if a >= b {
                add(
                    "arithmetic",
                    vec![
                        format!("what is {a} minus {b}?"),
                        format!("how much is {a} minus {b}?"),
                        format!("what is {a} - {b}?"),
                        format!("take {b} from {a}."),
                        format!("what do you get if you take {b} from {a}?"),
                        format!("compute {a} minus {b}."),
                    ],
                    number_word(a - b),
                );
            }
        }
    }
    // Successor, predecessor and parity over 0–9, the same small numbers as the arithmetic.
    for n in 0..=9usize {
        add(
            "reasoning",
            vec![
                format!("what comes after {n}?"),
                format!("what number follows {n}?"),
                format!("what is one more than {n}?"),
                format!("which number comes after {n}?"),
                format!("what is the next number after {n}?"),
            ],
            number_word(n + 1),
        );
        if n > 0 {
            add(
                "reasoning",
                vec![
                    format!("what comes before {n}?"),
                    format!("what number is before {n}?"),
                    format!("what is one less than {n}?"),
                    format!("which number comes before {n}?"),
                    format!("what is the number just before {n}?"),
                ],
                number_word(n - 1),
            );
        }
        add(
            "reasoning",
            vec![
                format!("is {n} even or odd?"),
                format!("is {n} odd or even?"),
                format!("tell me if {n} is even or odd."),
                format!("is the number {n} even or odd?"),
                format!("say if {n} is odd or even."),
            ],
            if n % 2 == 0 { "even" } else { "odd" }.to_string(),
        );
    }
    for a in 0..=12usize {
        for b in 0..=12usize {
            if a != b && (a + 2 * b) % 3 == 0 {
                add(
                    "reasoning",
                    vec![
                        format!("which is bigger, {a} or {b}?"),
                        format!("which number is larger, {a} or {b}?"),
                        format!("what is the larger of {a} and {b}?"),
                        format!("which is greater, {a} or {b}?"),
                        format!("tell me the bigger number, {a} or {b}."),
                    ],
                    number_word(a.max(b)),
                );
            }
        }
    }
    // Word problems: the content is the pair (a, b); each of its eight phrasings tells it as a
    // different story (name, object, sentence), so a test story is new but its sum is practised.
    let stories: [Story; 4] = [
        |n, a, t, b| format!("{n} has {a} {t} and gets {b} more. how many {t} does {n} have?"),
        |n, a, t, b| format!("{n} had {a} {t}, then found {b} more. how many {t} now?"),
        |n, a, t, b| format!("if {n} has {a} {t} and buys {b} more, how many {t} are there?"),
        |n, a, t, b| format!("{n} owns {a} {t} and is given {b} more. how many {t} does {n} own?"),
    ];
    for a in 1..=4usize {
        for b in 1..=4usize {
            let phrasings = (0..8)
                .map(|k| {
                    let name = NAMES[(a * 4 + b + 3 * k) % NAMES.len()];
                    let thing = THINGS[(a + b + k) % THINGS.len()];
                    stories[k % stories.len()](name, a, thing, b)
                })
                .collect();
            add("reasoning", phrasings, number_word(a + b));
        }
    }
    out
}

/// Builds the corpus. For each content item, one phrasing (chosen with `seed`) goes to the test
/// split and, for items with four or more phrasings, one more to validation; the rest are training
/// questions (at least two, up to four per item).
pub fn generate(seed: u64) -> QaCorpus {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for c in contents() {
        let mut idx: Vec<usize> = (0..c.phrasings.len()).collect();
        idx.shuffle(&mut rng);
        let pair = |i: usize| QaPair {
            category: c.category.to_string(),
            question: c.phrasings[i].clone(),
            answer: c.answer.clone(),
        };
        let mut rest = idx.as_slice();
        if c.phrasings.len() >= 3 {
            test.push(pair(rest[0]));
            rest = &rest[1..];
        }
        if c.phrasings.len() >= 4 {
            val.push(pair(rest[0]));
            rest = &rest[1..];
        }
        train.extend(rest.iter().map(|&i| pair(i)));
    }
    QaCorpus { train, val, test }
}
