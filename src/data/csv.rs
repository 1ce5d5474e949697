//! CSV datasets: a `path,label` pair (single-label), a `path,labels` pair with labels
//! separated by `;` (multi-label), or `path` plus one 0/1 column per label (multi-label).
//! Paths are relative to the CSV's folder; label names are sorted, as ImageFolder classes
//! are; a validation split without `--val-data` is stratified by label and, with a group
//! column, never puts one group on both sides.

use super::dataset::{Dataset, Sample, Source};
use super::Rng;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How many rows an error names before "and N more".
const NAMED: usize = 5;

/// True when `path` names a CSV file (by its extension, any case).
pub fn is_csv_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// How a CSV gives its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsvForm {
    /// A `label` column: one class per image.
    Label,
    /// A `labels` column: any number of labels per image, separated by `;`.
    Labels,
    /// One 0/1 column per label, named by the label (columns in file order).
    Columns(Vec<String>),
}

impl CsvForm {
    /// True for the forms that hold several labels per image.
    pub fn is_multi_label(&self) -> bool {
        !matches!(self, CsvForm::Label)
    }
}

/// One data row of a CSV.
#[derive(Clone, Debug)]
pub struct CsvRow {
    /// Row number as a spreadsheet shows it: the header is row 1, the first image row 2.
    pub row: usize,
    /// The image, resolved against the CSV's folder.
    pub path: PathBuf,
    /// The row's label names (one for [`CsvForm::Label`]; any number otherwise).
    pub labels: Vec<String>,
    /// The value of the group column, when one was named.
    pub group: Option<String>,
}

/// A CSV file read and checked: every image exists, every row has its labels.
#[derive(Clone, Debug)]
pub struct CsvTable {
    /// The file.
    pub file: PathBuf,
    /// How the labels are given.
    pub form: CsvForm,
    /// The image rows, in file order.
    pub rows: Vec<CsvRow>,
}

/// "row 3: why; row 7: why; ... and N more".
fn name_rows(problems: &[(usize, String)]) -> String {
    let mut s: Vec<String> = problems
        .iter()
        .take(NAMED)
        .map(|(row, why)| format!("row {row}: {why}"))
        .collect();
    if problems.len() > NAMED {
        s.push(format!("and {} more", problems.len() - NAMED));
    }
    s.join("; ")
}

/// The first few names of a list, for messages.
fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > NAMED {
        s.push_str(", …");
    }
    s
}

/// A 0/1 cell: 0, 1, 0.0, 1.0, true, false (any case).
fn zero_one(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" => Some(true),
        "0" | "0.0" | "false" => Some(false),
        _ => None,
    }
}

impl CsvTable {
    /// Reads `file`, resolving image paths against its folder. `group_column` names a column
    /// to split by (it is then not a label column). Errors name the row: a missing image, an
    /// empty label, a cell that is not 0/1.
    pub fn read(file: &Path, group_column: Option<&str>) -> Result<CsvTable> {
        let what = file.display();
        if !file.is_file() {
            bail!("CSV file {what} does not exist");
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(false)
            .from_path(file)
            .with_context(|| format!("cannot read CSV file {what}"))?;
        let header: Vec<String> = rdr
            .headers()
            .with_context(|| format!("{what}: cannot read the header row"))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        let col = |name: &str| header.iter().position(|h| h == name);
        let expected = "expected a header `path,label` (one class per image), `path,labels` \
                        (labels separated by ';') or `path` plus one 0/1 column per label";
        let Some(path_col) = col("path") else {
            bail!(
                "{what}: no `path` column in the header ({}): {expected}",
                header.join(",")
            );
        };
        let group_col = match group_column {
            Some(g) => Some(col(g).ok_or_else(|| {
                anyhow!(
                    "{what}: --group-column {g}: no such column (the header has {})",
                    header.join(", ")
                )
            })?),
            None => None,
        };
        for (i, h) in header.iter().enumerate() {
            if header[..i].contains(h) {
                bail!("{what}: column `{h}` appears twice in the header");
            }
        }
        let form = if let Some(c) = col("label") {
            (c, CsvForm::Label)
        } else if let Some(c) = col("labels") {
            (c, CsvForm::Labels)
        } else {
            let names: Vec<String> = header
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != path_col && Some(i) != group_col)
                .map(|(_, h)| h.clone())
                .collect();
            if names.is_empty() {
                bail!(
                    "{what}: no label columns ({}): {expected}",
                    header.join(",")
                );
            }
            if names.iter().any(|n| n.is_empty()) {
                bail!("{what}: a label column has no name: name every column in the header");
            }
            (usize::MAX, CsvForm::Columns(names))
        };
        let (label_col, form) = form;
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        for (k, rec) in rdr.records().enumerate() {
            let row = k + 2;
            let rec = rec.map_err(|e| anyhow!("{what} row {row}: {e}"))?;
            let cell = |i: usize| rec.get(i).unwrap_or("");
            let p = cell(path_col);
            if p.is_empty() {
                bail!("{what} row {row}: the `path` cell is empty");
            }
            let path = dir.join(p);
            if !path.is_file() {
                missing.push((row, format!("image {} does not exist", path.display())));
            }
            let labels = match &form {
                CsvForm::Label => {
                    let l = cell(label_col);
                    if l.is_empty() {
                        bail!(
                            "{what} row {row}: the `label` cell is empty: every image needs its \
                             class (for none or several labels per image use a `labels` column \
                             and --multi-label)"
                        );
                    }
                    vec![l.to_string()]
                }
                CsvForm::Labels => {
                    let mut v: Vec<String> = cell(label_col)
                        .split(';')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                    v.sort();
                    v.dedup();
                    v
                }
                CsvForm::Columns(names) => {
                    let mut v = Vec::new();
                    for (i, h) in header.iter().enumerate() {
                        if !names.contains(h) {
                            continue;
                        }
                        match zero_one(cell(i)) {
                            Some(true) => v.push(h.clone()),
                            Some(false) => {}
                            None => bail!(
                                "{what} row {row}: column `{h}` holds '{}', not 0 or 1 (every \
                                 column but `path`{} is a 0/1 label column; name a grouping \
                                 column with --group-column)",
                                cell(i),
                                group_column
                                    .map(|g| format!(" and `{g}`"))
                                    .unwrap_or_default()
                            ),
                        }
                    }
                    v
                }
            };
            let group = match group_col {
                Some(g) if cell(g).is_empty() => bail!(
                    "{what} row {row}: the group column `{}` is empty: every row needs its group",
                    header[g]
                ),
                Some(g) => Some(cell(g).to_string()),
                None => None,
            };
            rows.push(CsvRow {
                row,
                path,
                labels,
                group,
            });
        }
        if !missing.is_empty() {
            bail!(
                "{what}: {} image{} not found ({}); paths are relative to the CSV's folder {}",
                missing.len(),
                if missing.len() == 1 { " is" } else { "s are" },
                name_rows(&missing),
                dir.display()
            );
        }
        if rows.is_empty() {
            bail!("{what} has a header but no image rows");
        }
        Ok(CsvTable {
            file: file.to_path_buf(),
            form,
            rows,
        })
    }

    /// The label names the table uses, sorted: every 0/1 column, or every label of a row.
    pub fn label_names(&self) -> Vec<String> {
        let mut set: BTreeSet<String> = self.rows.iter().flat_map(|r| r.labels.clone()).collect();
        if let CsvForm::Columns(names) = &self.form {
            set.extend(names.iter().cloned());
        }
        set.into_iter().collect()
    }

    /// The rows as samples labelled by index into `classes`; a label that is not one of them
    /// is an error naming its row.
    pub fn samples(&self, classes: &[String]) -> Result<Vec<Sample>> {
        let index: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut unknown = Vec::new();
        let mut out = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let mut ids = Vec::new();
            for l in &r.labels {
                match index.get(l.as_str()) {
                    Some(&i) => ids.push(i),
                    None => unknown.push((r.row, format!("unknown label '{l}'"))),
                }
            }
            ids.sort_unstable();
            out.push(match self.form {
                CsvForm::Label => Sample {
                    source: Source::File(r.path.clone()),
                    label: ids.first().copied().unwrap_or(0),
                    labels: None,
                },
                _ => Sample {
                    source: Source::File(r.path.clone()),
                    label: ids.first().copied().unwrap_or(0),
                    labels: Some(ids),
                },
            });
        }
        if !unknown.is_empty() {
            bail!(
                "{}: {} (the {} known label{}: {})",
                self.file.display(),
                name_rows(&unknown),
                classes.len(),
                if classes.len() == 1 { "" } else { "s" },
                preview(classes)
            );
        }
        Ok(out)
    }
}

/// Where a CSV dataset's splits come from.
#[derive(Clone, Debug, Default)]
pub struct CsvSplits {
    /// The training CSV.
    pub train: PathBuf,
    /// A validation CSV; without one, `val_fraction` of the training rows are held out.
    pub validation: Option<PathBuf>,
    /// A test CSV.
    pub test: Option<PathBuf>,
    /// Share of the training rows (or groups) held out for validation, in [0, 1).
    pub val_fraction: f64,
    /// Seed of the validation split.
    pub seed: u64,
    /// A column whose value no split shares (patient, slide, ...).
    pub group_column: Option<String>,
}

impl Dataset {
    /// A dataset from CSV files (see [`CsvSplits`]): classes are the training CSV's label
    /// names, sorted; the validation and test CSVs may use only those.
    pub fn from_csv(s: &CsvSplits) -> Result<Dataset> {
        let group = s.group_column.as_deref();
        let train = CsvTable::read(&s.train, group)?;
        let classes = train.label_names();
        if classes.is_empty() {
            bail!(
                "{}: no row has a label: give each image its labels",
                s.train.display()
            );
        }
        let samples = train.samples(&classes)?;
        let mut ds = Dataset {
            classes,
            multi_label: train.form.is_multi_label(),
            ..Default::default()
        };
        let other = |file: &Path| -> Result<CsvTable> {
            let t = CsvTable::read(file, group)?;
            if let (CsvForm::Columns(a), CsvForm::Columns(b)) = (&train.form, &t.form) {
                let (a, b): (BTreeSet<_>, BTreeSet<_>) = (a.iter().collect(), b.iter().collect());
                if a != b {
                    bail!(
                        "{}: its label columns ({}) differ from the training CSV's ({})",
                        file.display(),
                        b.into_iter().cloned().collect::<Vec<_>>().join(", "),
                        a.into_iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            if t.form.is_multi_label() != train.form.is_multi_label() {
                bail!(
                    "{} gives {} per image but the training CSV {} gives {}: use the same form",
                    file.display(),
                    if t.form.is_multi_label() {
                        "several labels"
                    } else {
                        "one label"
                    },
                    s.train.display(),
                    if ds.multi_label { "several" } else { "one" }
                );
            }
            Ok(t)
        };
        let groups_of = |t: &CsvTable| -> BTreeSet<String> {
            t.rows.iter().filter_map(|r| r.group.clone()).collect()
        };
        match &s.validation {
            Some(v) => {
                let t = other(v)?;
                ds.validation = t.samples(&ds.classes)?;
                let shared: Vec<String> = groups_of(&train)
                    .intersection(&groups_of(&t))
                    .cloned()
                    .collect();
                if !shared.is_empty() {
                    eprintln!(
                        "warning: {} group{} of column `{}` appear in both the training and the \
                         validation CSV (e.g. '{}'): the validation score may be optimistic",
                        shared.len(),
                        if shared.len() == 1 { "" } else { "s" },
                        group.unwrap_or_default(),
                        shared[0]
                    );
                }
                ds.train = samples;
            }
            None => {
                let rows_groups: Option<Vec<&str>> =
                    train.rows.iter().map(|r| r.group.as_deref()).collect();
                let val = split_validation(
                    &samples,
                    rows_groups.as_deref(),
                    ds.classes.len(),
                    s.val_fraction,
                    s.seed,
                );
                for (sample, v) in samples.into_iter().zip(val) {
                    if v {
                        ds.validation.push(sample);
                    } else {
                        ds.train.push(sample);
                    }
                }
            }
        }
        if let Some(t) = &s.test {
            ds.test = other(t)?.samples(&ds.classes)?;
        }
        Ok(ds)
    }
}

/// Which rows go to validation: about `fraction` of them, stratified by label, all rows of a
/// group on one side. Single-label rows without groups are split per class exactly as an
/// image folder is (round(n·fraction) of each class, at most n − 1); otherwise whole groups
/// (each row its own group without a group column) are assigned greedily, largest first, to
/// the side that brings each label's validation count and the total closest to `fraction`
/// of theirs. Both sides keep the file's row order.
pub fn split_validation(
    samples: &[Sample],
    groups: Option<&[&str]>,
    n_labels: usize,
    fraction: f64,
    seed: u64,
) -> Vec<bool> {
    let n = samples.len();
    let mut val = vec![false; n];
    if fraction <= 0.0 || n < 2 {
        return val;
    }
    let mut rng = Rng::new(seed);
    let multi = samples.iter().any(|s| s.labels.is_some());
    if groups.is_none() && !multi {
        for c in 0..n_labels {
            let mut idx: Vec<usize> = (0..n).filter(|&i| samples[i].label == c).collect();
            rng.shuffle(&mut idx);
            let k = ((idx.len() as f64) * fraction).round() as usize;
            for &i in &idx[..k.min(idx.len().saturating_sub(1))] {
                val[i] = true;
            }
        }
        return val;
    }
    // Rows of each group, groups in order of first appearance.
    let mut members: Vec<Vec<usize>> = Vec::new();
    match groups {
        Some(g) => {
            let mut id: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, &name) in g.iter().enumerate() {
                let k = *id.entry(name).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[k].push(i);
            }
        }
        None => members = (0..n).map(|i| vec![i]).collect(),
    }
    if members.len() < 2 {
        return val;
    }
    let counts = |rows: &[usize]| {
        let mut c = vec![0.0f64; n_labels];
        for &i in rows {
            for &l in samples[i].positives() {
                c[l] += 1.0;
            }
        }
        c
    };
    let total = counts(&(0..n).collect::<Vec<_>>());
    let target: Vec<f64> = total.iter().map(|&t| t * fraction).collect();
    let target_n = n as f64 * fraction;
    // Squared distance from the targets, each label relative to its size.
    let cost = |have: &[f64], have_n: f64| {
        let labels: f64 = have
            .iter()
            .zip(&target)
            .zip(&total)
            .map(|((h, t), n)| (h - t).powi(2) / n.max(1.0))
            .sum();
        labels + (have_n - target_n).powi(2) / n as f64
    };
    let mut order: Vec<usize> = (0..members.len()).collect();
    rng.shuffle(&mut order);
    order.sort_by_key(|&g| std::cmp::Reverse(members[g].len()));
    let group_counts: Vec<Vec<f64>> = members.iter().map(|m| counts(m)).collect();
    let mut have = vec![0.0; n_labels];
    let mut have_n = 0.0;
    let mut in_val = vec![false; members.len()];
    let with = |have: &[f64], g: usize| -> Vec<f64> {
        have.iter()
            .zip(&group_counts[g])
            .map(|(a, b)| a + b)
            .collect()
    };
    for &g in &order {
        let add = with(&have, g);
        let add_n = have_n + members[g].len() as f64;
        // Never the last group: training keeps at least one.
        let left = in_val.iter().filter(|v| !**v).count();
        if left > 1 && cost(&add, add_n) < cost(&have, have_n) {
            have = add;
            have_n = add_n;
            in_val[g] = true;
        }
    }
    if !in_val.iter().any(|&v| v) && target_n >= 0.5 {
        // A fraction too small for any group to help: the group that costs least, so that
        // validation is not empty.
        let best = order
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let ca = cost(&with(&have, a), members[a].len() as f64);
                let cb = cost(&with(&have, b), members[b].len() as f64);
                ca.total_cmp(&cb)
            })
            .unwrap_or(0);
        in_val[best] = true;
    }
    for (g, rows) in members.iter().enumerate() {
        for &i in rows {
            val[i] = in_val[g];
        }
    }
    val
}
