#[ensemble::main]
fn main(args: Vec<String>) {}
