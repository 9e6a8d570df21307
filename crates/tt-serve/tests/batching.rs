//! The scheduler against the workspace's generation loop: requests that join and leave a shared
//! decoder at different steps produce exactly the tokens each produces alone
//! (`generate_traced`, one row), greedy and seeded, in f32 and int8; a sink can end its request;
//! jobs that can never run are refused, and a full batcher hands the job back.

use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_quant::{quantize_dynamic, WeightConfig};
use tt_serve::batcher::{Batcher, Finish, Job, Refused, Sink};
use tt_transformer::generate::{generate_traced, GenerateConfig, Sampling};
use tt_transformer::Gpt;

/// Records what the batcher sends; optionally ends its request after `limit` tokens.
#[derive(Debug, Default)]
struct Record {
    tokens: Vec<usize>,
    end: Option<(Finish, Vec<usize>)>,
    limit: Option<usize>,
}

impl Sink for &mut Record {
    fn token(&mut self, token: usize) -> bool {
        self.tokens.push(token);
        self.limit.is_none_or(|l| self.tokens.len() < l)
    }
    fn finish(&mut self, end: Finish, tokens: &[usize]) {
        assert!(self.end.is_none(), "finish is called once");
        self.end = Some((end, tokens.to_vec()));
    }
}

fn sampling(i: usize) -> Sampling {
    if i.is_multiple_of(2) {
        Sampling::Greedy
    } else {
        Sampling::Sample { temperature: 0.9, top_k: Some(6), top_p: Some(0.95) }
    }
}

fn prompt(i: usize) -> Vec<usize> {
    (0..2 + i % 5).map(|t| (t * 5 + i * 3 + 1) % 12).collect()
}

/// What request `i` generates alone, by the one generation loop.
fn alone(m: &Gpt, i: usize, max: usize, stops: &[usize]) -> Vec<usize> {
    let mut e = CachedGpt::new(m, 1, OverflowPolicy::Error).unwrap();
    let cfg = GenerateConfig {
        max_new_tokens: max,
        sampling: sampling(i),
        seed: 100 + i as u64,
        stop_tokens: stops.to_vec(),
    };
    generate_traced(&mut e, &[&prompt(i)], &cfg, &mut |_| {}).unwrap().tokens.remove(0)
}

fn check_against_alone(m: &Gpt) {
    let stops = [7];
    let n = 9;
    let max = |i: usize| 4 + 3 * i;
    let mut records: Vec<Record> = (0..n).map(|_| Record::default()).collect();
    {
        let mut b: Batcher<&mut Record> = Batcher::new(CachedGpt::new(m, 3, OverflowPolicy::Error).unwrap());
        let mut pending: Vec<(usize, &mut Record)> = records.iter_mut().enumerate().collect();
        pending.reverse();
        let mut step = 0usize;
        // One request offered every other step; the batcher's three slots fill and free.
        while !pending.is_empty() || b.running() > 0 {
            if step.is_multiple_of(2) {
                if let Some((i, r)) = pending.pop() {
                    let job = Job {
                        prompt: prompt(i),
                        max_new_tokens: max(i),
                        sampling: sampling(i),
                        seed: 100 + i as u64,
                        stop_tokens: stops.to_vec(),
                        sink: r,
                    };
                    match b.admit(job) {
                        Ok(()) => {}
                        Err(Refused::Full(job)) => pending.push((i, job.sink)),
                        Err(Refused::Invalid(why, _)) => panic!("{why}"),
                    }
                }
            }
            b.step();
            step += 1;
            assert!(step < 1000);
        }
    }
    for (i, r) in records.iter().enumerate() {
        let want = alone(m, i, max(i), &stops);
        let (end, tokens) = r.end.clone().expect("finished");
        assert_eq!(tokens, want, "request {i}");
        assert_eq!(r.tokens, want);
        let expect = if want.last() == Some(&7) { Finish::StopToken } else { Finish::Length };
        assert_eq!(end, expect, "request {i}");
    }
}

#[test]
fn requests_joining_and_leaving_get_the_tokens_they_get_alone() {
    let m = tt_transformer::testing::trained_tiny(31).unwrap();
    check_against_alone(&m);
}

#[test]
fn the_same_holds_for_an_int8_model() {
    let mut m = tt_transformer::testing::trained_tiny(32).unwrap();
    quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap();
    check_against_alone(&m);
}

#[test]
fn a_sink_ends_its_request_and_bad_jobs_are_refused() {
    let m = tt_transformer::testing::trained_tiny(33).unwrap();
    let mut a = Record { limit: Some(2), ..Record::default() };
    let mut b2 = Record::default();
    let mut c = Record::default();
    {
        let mut b: Batcher<&mut Record> = Batcher::new(CachedGpt::new(&m, 2, OverflowPolicy::Error).unwrap());
        let job = |sink, prompt: Vec<usize>, max| Job {
            prompt,
            max_new_tokens: max,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: vec![],
            sink,
        };
        let refuse = |r: Result<(), Refused<&mut Record>>| match r {
            Err(Refused::Invalid(why, _)) => why,
            _ => panic!("not refused"),
        };
        let mut scratch = Record::default();
        assert!(refuse(b.admit(job(&mut scratch, vec![], 4))).contains("empty"));
        let mut scratch = Record::default();
        assert!(refuse(b.admit(job(&mut scratch, vec![1], 0))).contains("0"));
        let mut scratch = Record::default();
        assert!(refuse(b.admit(job(&mut scratch, vec![1; 10], 60))).contains("context"));
        let mut scratch = Record::default();
        assert!(refuse(b.admit(job(&mut scratch, vec![99], 3))).contains("vocabulary"));
        b.admit(job(&mut a, vec![1, 2], 20)).unwrap();
        b.admit(job(&mut b2, vec![3], 3)).unwrap();
        let back = match b.admit(job(&mut c, vec![4], 3)) {
            Err(Refused::Full(j)) => j,
            _ => panic!("a full batcher hands the job back"),
        };
        assert_eq!((b.step(), b.running()), (2, 2));
        // The first sink stops after its second token; its slot is free for the third request.
        assert_eq!((b.step(), b.running()), (2, 1));
        b.admit(back).unwrap();
        while b.step() > 0 {}
    }
    assert_eq!(a.end.as_ref().map(|e| &e.0), Some(&Finish::Sink));
    assert_eq!(a.tokens.len(), 2);
    assert_eq!(b2.end.unwrap().1.len(), 3);
    assert_eq!(c.end.unwrap().0, Finish::Length);
}
