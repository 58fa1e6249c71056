// Copyright 2022 Contributors to the Parsec project.
// SPDX-License-Identifier: Apache-2.0
pub mod algorithm_property;
pub mod tagged_pcr_select;
pub mod tagged_property;
