//! The story pipeline: from a trending topic and a style to the text the model writes.
//! For now it holds the prompt builder; the other stages join it here.

pub mod prompt;
