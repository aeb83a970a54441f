//! The CLI's tables, printed one way: fixed columns padded to a width, the last one unpadded
//! because it holds free text (an error, a list of events). Fixed widths rather than widths fitted
//! to the rows, so that `events tail` can print rows as they arrive under the header it printed
//! first; a value longer than its column pushes the rest of its row right, never truncated.

use std::fmt::{self, Write as _};

/// A column's title and width; the last column's width is ignored.
pub struct Column {
    pub title: &'static str,
    pub width: usize,
}

/// A table's columns, declared once per listing.
pub struct Table(pub &'static [Column]);

impl Table {
    /// The titles, aligned as the rows will be.
    pub fn header(&self) -> String {
        let titles: Vec<&dyn fmt::Display> = self.0.iter().map(|c| &c.title as _).collect();
        self.row(&titles)
    }

    /// One row; `cells` follow the columns, one each.
    pub fn row(&self, cells: &[&dyn fmt::Display]) -> String {
        debug_assert_eq!(cells.len(), self.0.len(), "one cell per column");
        let mut line = String::new();
        let last = cells.len().saturating_sub(1);
        for (index, (cell, column)) in cells.iter().zip(self.0).enumerate() {
            if index == last {
                let _ = write!(line, "{cell}");
            } else {
                // `{:<w$}` pads a `Display` only when it forwards padding; render first so every
                // cell type pads alike.
                let _ = write!(line, "{:<width$} ", cell.to_string(), width = column.width);
            }
        }
        line
    }

    /// Prints the header, then the rows ([`Table::row`]'s lines) to standard output.
    pub fn print(&self, rows: impl IntoIterator<Item = String>) {
        println!("{}", self.header());
        for line in rows {
            println!("{line}");
        }
    }
}

const fn column(title: &'static str, width: usize) -> Column {
    Column { title, width }
}

/// `jobs list`.
pub const JOBS: Table = Table(&[
    column("ID", 8),
    column("STATE", 10),
    column("ATTEMPT", 7),
    column("TYPE", 28),
    column("WEBHOOK_ID", 40),
    column("LAST ERROR", 0),
]);

/// `deliveries list`.
pub const DELIVERIES: Table = Table(&[
    column("ID", 8),
    column("SINK", 16),
    column("STATE", 10),
    column("ATTEMPT", 7),
    column("WEBHOOK_ID", 40),
    column("LAST ERROR", 0),
]);

/// `events list`.
pub const EVENTS: Table = Table(&[
    column("RECEIVED_AT", 25),
    column("WEBHOOK_ID", 40),
    column("TYPE", 28),
    column("STATUS", 12),
    column("JOB", 0),
]);

/// `events tail`: the header once, then a row per event as it arrives.
pub const TAIL: Table = Table(&[
    column("TIME", 12),
    column("WEBHOOK_ID", 40),
    column("TYPE", 28),
    column("STATUS", 11),
    column("SCHEME", 6),
    column("JOB", 0),
]);

/// `webhooks list`.
pub const WEBHOOKS: Table = Table(&[
    column("ID", 24),
    column("STATE", 34),
    column("URI", 48),
    column("EVENTS", 0),
]);

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: Table = Table(&[column("ID", 4), column("STATE", 9), column("LAST ERROR", 0)]);

    #[test]
    fn cells_are_padded_to_their_column_and_the_last_one_is_not() {
        assert_eq!(TABLE.header(), "ID   STATE     LAST ERROR");
        let row = TABLE.row(&[&7, &"retryable", &"HTTP 503 from the sink"]);
        assert_eq!(row, "7    retryable HTTP 503 from the sink");
        assert_eq!(TABLE.row(&[&12, &"completed", &""]), "12   completed ");
    }

    #[test]
    fn a_value_wider_than_its_column_pushes_the_row_right_and_is_kept_whole() {
        let row = TABLE.row(&[&123_456, &"discarded", &"x"]);
        assert_eq!(row, "123456 discarded x");
    }
}
