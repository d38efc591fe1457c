use hooklens::Hooked;

#[derive(hooklens::Hooked)]
union Bits {
    int: u32,
    float: f32,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Bits>();
}
