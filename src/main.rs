fn main() {
    println!("kith: not yet");
}
