//! A plain-text table whose headings and values share one list of columns, so a heading
//! always sits over its own column.

use std::fmt;

/// A column: its heading and its width in characters (values are right-aligned).
pub struct Column {
    heading: &'static str,
    width: usize,
}

impl Column {
    pub fn new(heading: &'static str, width: usize) -> Self {
        Self {
            heading,
            width: width.max(heading.len()),
        }
    }
}

/// See the module doc.
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Self {
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row: one value per column, in order.
    ///
    /// # Panics
    /// When the row does not have one value per column (a bug in the caller).
    pub fn row(&mut self, values: Vec<String>) {
        assert_eq!(values.len(), self.columns.len(), "one value per column");
        self.rows.push(values);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, cells: Vec<&str>| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .map(|(cell, c)| format!("{cell:>width$}", width = c.width))
                .collect();
            writeln!(f, "{}", cells.join(" "))
        };
        line(f, self.columns.iter().map(|c| c.heading).collect())?;
        for row in &self.rows {
            line(f, row.iter().map(String::as_str).collect())?;
        }
        Ok(())
    }
}
