use fabric::hooks;

#[hooks]
struct Misplaced;

fn main() {}
