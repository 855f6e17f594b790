//! Tests of the layout and relocation engine.
